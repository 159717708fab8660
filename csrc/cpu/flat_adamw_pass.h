// One flat AdamW pass over a list of tensors, shared by the CPU steps whose
// term needs only the element's position (admm_step_, movement_step_).
//
// Why a shared pass: the dtype dispatch, the split into chunks, the working
// copies and their write-backs are the same for every such family; only
// the term differs, so the family hands in a factory for it.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "adamw_body.h"
#include "cpu_utils.h"
#include "working_copy.h"

namespace mgpp_ext {
namespace cpu {

// Steps every element of params once: g' = term(p, g), then AdamW. The
// term of the chunk that starts at element o of tensor i is make_term(i, o),
// and it is indexed from that chunk's start (o is a multiple of kChunk, so
// of 8: a chunk starts on a byte of a packed mask). Non-contiguous tensors
// are worked on through contiguous copies, written back at the end; state
// the term writes is the caller's to write back.
template <typename MakeTerm>
void flat_adamw_pass(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                     at::TensorList exp_avg_sqs, const AdamWConsts& c,
                     const MakeTerm& make_term) {
  auto p = working(params), m = working(exp_avgs), v = working(exp_avg_sqs);
  const auto g = contiguous(grads);
  const auto chunks = make_chunks(numels_of(params));
  dispatch_param_state(params[0].scalar_type(), exp_avgs[0].scalar_type(), [&](auto p_tag,
                                                                               auto s_tag) {
    using P = decltype(p_tag);
    using S = decltype(s_tag);
    at::parallel_for(0, int64_t(chunks.size()), 1, [&](int64_t b, int64_t e) {
      for (int64_t ci = b; ci < e; ++ci) {
        const Chunk& ch = chunks[ci];
        const int64_t i = ch.tensor, o = ch.begin;
        adamw_block(p[i].work.data_ptr<P>() + o, g[i].const_data_ptr<P>() + o,
                    m[i].work.data_ptr<S>() + o, v[i].work.data_ptr<S>() + o, ch.end - o, c,
                    make_term(i, o), NoPost{});
      }
    });
  });
  write_back(p);
  write_back(m);
  write_back(v);
}

}  // namespace cpu
}  // namespace mgpp_ext
