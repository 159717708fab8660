// N:M keep masks and in-place N:M pruning on the CPU: each block's keys
// come from the scores (or |x|), the selection is nm_block.h's, and the
// block's weights and mask are written while it is in L1. The dtypes of
// weights and scores are dispatched per block instead of multiplying the
// selection's templates.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "../nm_layout.h"
#include "../nm_select.h"
#include "cpu_utils.h"
#include "nm_block.h"

namespace mgpp_ext {
namespace cpu {
namespace {

using namespace nm_block;


// The weights' bits: may_alias, since the same memory is read as floats
// (the |x| keys) in the same block.
typedef uint32_t __attribute__((__may_alias__)) bits32_t;
typedef uint16_t __attribute__((__may_alias__)) bits16_t;

// x &= keep lane (bitwise, so a kept element keeps its exact bits).
template <typename U>
void apply_row(U* x, const int32_t* keep, int64_t len) {
  for (int64_t i = 0; i < len; ++i) x[i] &= static_cast<U>(keep[i]);
}

void mask_row(bool* mask, const int32_t* keep, int64_t len) {
  uint8_t* out = reinterpret_cast<uint8_t*>(mask);
  for (int64_t i = 0; i < len; ++i) out[i] = static_cast<uint8_t>(keep[i] & 1);
}

// One walk as raw pointers.
struct Job {
  void* x = nullptr;  // pruned in place; null for nm_mask
  at::ScalarType x_type = at::kFloat;
  const void* s = nullptr;  // scores (x itself when abs)
  at::ScalarType s_type = at::kFloat;
  bool abs = false;
  bool* mask = nullptr;
  Units units;
};

void keys_of(const Job& job, int64_t offset, int64_t len, int32_t* out) {
  MGPP_DISPATCH_PARAM_TYPES(job.s_type, "nm", [&] {
    const scalar_t* s = static_cast<const scalar_t*>(job.s) + offset;
    if (job.abs) {
      keys_row<scalar_t, true>(s, len, out);
    } else {
      keys_row<scalar_t, false>(s, len, out);
    }
  });
}

void write_of(const Job& job, int64_t offset, const int32_t* keep, int64_t len) {
  if (job.x != nullptr) {
    if (job.x_type == at::kFloat) {
      apply_row(static_cast<bits32_t*>(job.x) + offset, keep, len);
    } else {
      apply_row(static_cast<bits16_t*>(job.x) + offset, keep, len);
    }
  }
  if (job.mask != nullptr) mask_row(job.mask + offset, keep, len);
}

Job make_job(const nm::Walk& w, int64_t m) {
  Job job;
  if (w.x.work.defined()) {
    job.x = w.x.work.data_ptr();
    job.x_type = w.x.work.scalar_type();
  }
  if (w.s.defined()) {
    job.s = w.s.const_data_ptr();
    job.s_type = w.s.scalar_type();
  } else {
    job.s = job.x;
    job.s_type = job.x_type;
    job.abs = true;
  }
  if (w.mask.work.defined()) job.mask = w.mask.work.data_ptr<bool>();
  job.units = make_units(w.layout, w.numel, m);
  return job;
}

// Every walk in one parallel loop, over pieces of about kChunk elements.
void run_walks(const std::vector<nm::Walk>& walks, int64_t n, int64_t m) {
  std::vector<Job> jobs;
  std::vector<Units> units;
  jobs.reserve(walks.size());
  for (const auto& w : walks) {
    jobs.push_back(make_job(w, m));
    units.push_back(jobs.back().units);
  }
  const std::vector<Chunk> pieces = unit_pieces(units);
  at::parallel_for(0, static_cast<int64_t>(pieces.size()), 1, [&](int64_t b, int64_t e) {
    Buffers buf;
    for (int64_t p = b; p < e; ++p) {
      const Chunk& piece = pieces[p];
      const Job& job = jobs[piece.tensor];
      const auto keys = [&](int64_t offset, int64_t len, int32_t* out) {
        keys_of(job, offset, len, out);
      };
      const auto write = [&](int64_t offset, const int32_t* keep, int64_t len) {
        write_of(job, offset, keep, len);
      };
      for (int64_t u = piece.begin; u < piece.end; ++u) {
        run_unit(job.units, u, int(m), int(n), buf, keys, write);
      }
    }
  });
}

void check_cpu(const at::Tensor& t, const char* op, const std::string& name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": '", name, "' must be a CPU tensor, got ",
                    t.device());
}

at::Tensor nm_mask_cpu(const at::Tensor& scores, int64_t n, int64_t m, int64_t dim) {
  const char* op = "nm_mask";
  nm::check_pattern(n, m, op);
  nm::check_float(scores, op, "scores");
  check_cpu(scores, op, "scores");
  const int64_t d = nm::check_group_dim(scores, dim, m, op, "scores");
  at::Tensor out = at::empty_like(scores, scores.options().dtype(at::kBool));
  if (scores.numel() == 0) return out;
  std::vector<nm::Walk> walks;
  walks.push_back(nm::mask_walk(scores, out, d));
  run_walks(walks, n, m);
  walks[0].mask.write_back();
  return out;
}

void nm_prune_cpu(at::TensorList tensors, at::TensorList scores, int64_t n, int64_t m,
                  at::IntArrayRef dims, at::TensorList masks) {
  const char* op = "nm_prune_";
  const std::vector<int64_t> d = nm::check_prune_args(tensors, scores, n, m, dims, masks, op);
  if (tensors.empty()) return;
  check_cpu(tensors[0], op, "tensors[0]");
  std::vector<nm::Walk> walks = nm::prune_walks(tensors, scores, d, masks);
  run_walks(walks, n, m);
  for (auto& w : walks) {
    w.x.write_back();
    w.mask.write_back();
  }
}

}  // namespace
}  // namespace cpu
}  // namespace mgpp_ext

TORCH_LIBRARY_IMPL(mgpp_ext, CPU, m) {
  m.impl("nm_mask", &mgpp_ext::cpu::nm_mask_cpu);
  m.impl("nm_prune_", &mgpp_ext::cpu::nm_prune_cpu);
}