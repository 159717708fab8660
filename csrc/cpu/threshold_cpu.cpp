// Exact global magnitude threshold on the CPU: histograms of |x| bit
// patterns, the bin selection, and the masking passes. See csrc/ops.cpp for
// the select_state layout.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../memory_checks.h"
#include "cpu_utils.h"

namespace mgpp_ext {
namespace cpu {
namespace {

// Level 1 only visits elements of one level-0 bin, a tiny fraction of all:
// a vector range test skips the blocks with none of them. For a finite bin
// [lo, hi) the float comparison is the bit comparison (NaN lanes compare
// false, and NaN never lies in a finite bin).
template <typename T>
void histogram_level1(const T* x, int64_t begin, int64_t end, uint32_t prefix, int64_t* h) {
  int64_t j = begin;
  if (prefix < 0x7f80u) {
    const fVec lo(float_of_bits(prefix << 16)), hi(float_of_bits((prefix + 1) << 16));
    for (; j + kBlock <= end; j += kBlock) {
      fVec a, b;
      load2(x + j, a, b);
      a = a.abs();
      b = b.abs();
      const fVec in = ((a >= lo) & (a < hi)) | ((b >= lo) & (b < hi));
      if (in.zero_mask() == (1 << fVec::size()) - 1) continue;
      for (int64_t q = j; q < j + kBlock; ++q) {
        const uint32_t bits = abs_bits(static_cast<float>(x[q]));
        if ((bits >> 16) == prefix) ++h[bits & 0xffffu];
      }
    }
  }
  for (; j < end; ++j) {
    const uint32_t bits = abs_bits(static_cast<float>(x[j]));
    if ((bits >> 16) == prefix) ++h[bits & 0xffffu];
  }
}

// x = 0 where |x| <= tau; mask = |x| > tau. Written as !(|x| <= tau) so
// that NaN (above every float in bit order) is kept, as the bits compare.
template <typename T>
void threshold_range(T* x, bool* mask, int64_t begin, int64_t end, uint32_t tau_bits) {
  int64_t j = begin;
  if (tau_bits < 0x7f800000u) {
    const fVec tau(float_of_bits(tau_bits)), zero(0.0f);
    for (; j + kBlock <= end; j += kBlock) {
      fVec a, b;
      load2(x + j, a, b);
      const fVec pa = a.abs() <= tau, pb = b.abs() <= tau;
      const int none_a = pa.zero_mask(), none_b = pb.zero_mask();
      const int all = (1 << fVec::size()) - 1;
      if (none_a != all || none_b != all) {
        store2(x + j, fVec::blendv(a, zero, pa), fVec::blendv(b, zero, pb));
      }
      if (mask) {
        for (int64_t q = 0; q < fVec::size(); ++q) {
          mask[j + q] = (none_a >> q) & 1;
          mask[j + fVec::size() + q] = (none_b >> q) & 1;
        }
      }
    }
  }
  for (; j < end; ++j) {
    const bool keep = abs_bits(static_cast<float>(x[j])) > tau_bits;
    if (!keep) x[j] = T(0);
    if (mask) mask[j] = keep;
  }
}

std::vector<int64_t> numels_of(at::TensorList ts) {
  std::vector<int64_t> n;
  for (const auto& t : ts) n.push_back(t.numel());
  return n;
}

void abs_histogram_cpu(at::TensorList tensors, const at::Tensor& select_state,
                       const at::Tensor& hist, int64_t level) {
  const char* op = "abs_histogram_";
  check_cpu_float_list(tensors, op, "tensors");
  check_hist(hist, op, /*allow_empty=*/false);
  check_select_state(select_state, op);
  TORCH_CHECK(level == 0 || level == 1, op, ": 'level' must be 0 or 1, got ", level);
  mem::check_disjoint({{"tensors", tensors, false}, {"select_state", select_state, false}, {"hist", hist, true}},
                      op);
  const uint32_t prefix = level == 1 ? uint32_t(select_state.data_ptr<int64_t>()[1]) : 0;

  std::vector<at::Tensor> ts;
  for (const auto& t : tensors) ts.push_back(t.contiguous());
  const auto chunks = make_chunks(numels_of(tensors));
  const int nthreads = at::get_num_threads();
  std::vector<int64_t> local(size_t(nthreads) * 65536, 0);

  at::parallel_for(0, int64_t(chunks.size()), 1, [&](int64_t b, int64_t e) {
    int64_t* h = local.data() + size_t(at::get_thread_num()) * 65536;
    for (int64_t ci = b; ci < e; ++ci) {
      const Chunk& ch = chunks[ci];
      const at::Tensor& t = ts[ch.tensor];
      MGPP_DISPATCH_PARAM_TYPES(t.scalar_type(), "mgpp_ext_threshold", [&] {
        const scalar_t* x = t.const_data_ptr<scalar_t>();
        if (level == 0) {
          for (int64_t j = ch.begin; j < ch.end; ++j) {
            ++h[abs_bits(static_cast<float>(x[j])) >> 16];
          }
        } else {
          histogram_level1(x, ch.begin, ch.end, prefix, h);
        }
      });
    }
  });
  int64_t* out = hist.data_ptr<int64_t>();
  for (int t = 0; t < nthreads; ++t) {
    const int64_t* src = local.data() + size_t(t) * 65536;
    for (int64_t j = 0; j < 65536; ++j) out[j] += src[j];
  }
}

void select_bin_cpu(const at::Tensor& hist, const at::Tensor& select_state, int64_t level) {
  const char* op = "select_bin_";
  check_hist(hist, op, /*allow_empty=*/false);
  check_select_state(select_state, op);
  TORCH_CHECK(level == 0 || level == 1, op, ": 'level' must be 0 or 1, got ", level);
  int64_t* s = select_state.data_ptr<int64_t>();
  const int64_t* h = hist.const_data_ptr<int64_t>();
  const int64_t k = s[0];
  int64_t below = 0;
  int64_t bin = 0;
  for (; bin < 65536; ++bin) {
    if (below + h[bin] >= k) break;
    below += h[bin];
  }
  TORCH_CHECK(k >= 1 && bin < 65536, op, ": rank select_state[0] = ", k,
              " is outside the histogram's ", below, " elements");
  if (level == 0) {
    s[0] = k - below;
    s[1] = bin;
    s[3] = h[bin];
  } else {
    s[2] = (s[1] << 16) | bin;
  }
}

void apply_threshold_cpu(at::TensorList tensors, const at::Tensor& select_state,
                         at::TensorList masks) {
  const char* op = "apply_threshold_";
  check_cpu_float_list(tensors, op, "tensors");
  check_select_state(select_state, op);
  TORCH_CHECK(masks.empty() || masks.size() == tensors.size(), op,
              ": 'masks' must be empty or have one mask per tensor (",
              tensors.size(), "), got ", masks.size());
  check_cpu_masks(masks, tensors, op);
  mem::check_disjoint({{"tensors", tensors, true}, {"select_state", select_state, false}, {"masks", masks, true}},
                      op);
  const uint32_t tau = uint32_t(select_state.data_ptr<int64_t>()[2]);
  std::vector<ContiguousInOut> ts, ms;
  for (const auto& t : tensors) ts.emplace_back(t);
  for (const auto& t : masks) ms.emplace_back(t);
  const auto chunks = make_chunks(numels_of(tensors));
  at::parallel_for(0, int64_t(chunks.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t ci = b; ci < e; ++ci) {
      const Chunk& ch = chunks[ci];
      at::Tensor& t = ts[ch.tensor].work;
      bool* mk = ms.empty() ? nullptr : ms[ch.tensor].work.data_ptr<bool>();
      MGPP_DISPATCH_PARAM_TYPES(t.scalar_type(), "mgpp_ext_threshold", [&] {
        threshold_range(t.data_ptr<scalar_t>(), mk, ch.begin, ch.end, tau);
      });
    }
  });
  for (auto& t : ts) t.write_back();
  for (auto& t : ms) t.write_back();
}

void apply_mask_cpu(at::TensorList tensors, at::TensorList masks) {
  const char* op = "apply_mask_";
  check_cpu_float_list(tensors, op, "tensors");
  TORCH_CHECK(masks.size() == tensors.size(), op,
              ": 'masks' must have one mask per tensor (", tensors.size(),
              "), got ", masks.size());
  check_cpu_masks(masks, tensors, op);
  mem::check_disjoint({{"tensors", tensors, true}, {"masks", masks, false}}, op);
  std::vector<ContiguousInOut> ts;
  std::vector<at::Tensor> ms;
  for (const auto& t : tensors) ts.emplace_back(t);
  for (const auto& m : masks) ms.push_back(m.contiguous());
  const auto chunks = make_chunks(numels_of(tensors));
  at::parallel_for(0, int64_t(chunks.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t ci = b; ci < e; ++ci) {
      const Chunk& ch = chunks[ci];
      at::Tensor& t = ts[ch.tensor].work;
      const bool* mk = ms[ch.tensor].const_data_ptr<bool>();
      MGPP_DISPATCH_PARAM_TYPES(t.scalar_type(), "mgpp_ext_threshold", [&] {
        scalar_t* x = t.data_ptr<scalar_t>();
        for (int64_t j = ch.begin; j < ch.end; ++j) {
          if (!mk[j]) x[j] = scalar_t(0);
        }
      });
    }
  });
  for (auto& t : ts) t.write_back();
}

}  // namespace
}  // namespace cpu
}  // namespace mgpp_ext

TORCH_LIBRARY_IMPL(mgpp_ext, CPU, m) {
  m.impl("abs_histogram_", &mgpp_ext::cpu::abs_histogram_cpu);
  m.impl("select_bin_", &mgpp_ext::cpu::select_bin_cpu);
  m.impl("apply_threshold_", &mgpp_ext::cpu::apply_threshold_cpu);
  m.impl("apply_mask_", &mgpp_ext::cpu::apply_mask_cpu);
}
