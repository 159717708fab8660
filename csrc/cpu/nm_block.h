// The N:M selection of a block on the CPU, shared by the N:M ops
// (nm_cpu.cpp) and the fused steps that choose a mask while their data is
// in L1 (regulariser_cpu.cpp: SR-STE's step, ADMM's projection).
//
// Why blocks: a block of about kBlockElems elements (a run of whole groups,
// or a tile of m rows of a strided layout) goes through three small passes
// that stay in L1: scores -> int32 order keys (nm_select.h), keys -> keep
// lane masks (0 / -1), then the caller writes what the keep lanes decide.
// Memory is read and written once.
//
// Selection counts for every entry how many entries of its group beat it,
// one compare per pair of entries (nm_select.h), with groups down the
// vector lanes: lane l of row r holds entry r of group l, and the m rows are
// compared row against row. That is how a strided layout lies in memory
// (dim 0 of an [in, out] weight). Contiguous groups are turned into it:
// for m = 4, 8, 16, 32 (AVX2) by 4 x 4 / 8 x 8 transposes in registers,
// for m = 2 by one in-register swap of neighbours, for other m by a scalar
// transpose in L1.
//
// A walk over a tensor is a list of units (make_units); run_unit(units, u,
// ..., keys, write) asks keys(offset, len, out) for the order keys of each
// contiguous segment of unit u, selects, and hands each segment's keep
// lanes to write(offset, keep, len). A segment is asked for its keys before
// any segment of the unit is written, and no two units share an element.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "../nm_layout.h"
#include "../nm_select.h"
#include "cpu_utils.h"

namespace mgpp_ext {
namespace cpu {
namespace nm_block {

using nm::GroupLayout;
using nm::kMaxM;
using iVec = Vectorized<int32_t>;
constexpr int64_t kV = iVec::size();
static_assert(fVec::size() == kV, "float and int32 vectors must have the same lanes");

// Elements per block: its keys and keep lanes (int32 each) stay in L1.
constexpr int64_t kBlockElems = 2048;
// Buffer entries: a block plus the padding of up to kMaxM rows to whole vectors.
constexpr int64_t kBufElems = kBlockElems + kMaxM * kV;

template <bool kAbs>
inline iVec key_vec(const fVec& f) {
  const iVec b = at::vec::cast<int32_t>(f);
  const iVec a = b & iVec(0x7fffffff);
  if constexpr (kAbs) {
    return at::vec::minimum(a, iVec(nm::kNanAbsKey));
  } else {
    const iVec k = iVec::blendv(a, iVec(0) - a, b < iVec(0));
    return iVec::blendv(k, iVec(nm::kNanScoreKey), a > iVec(nm::kInfBits));
  }
}

// Order keys of len contiguous scores (nm::score_key / nm::abs_key).
template <typename S, bool kAbs>
inline void keys_row(const S* s, int64_t len, int32_t* out) {
  int64_t i = 0;
  for (; i + kBlock <= len; i += kBlock) {
    fVec a, b;
    load2(s + i, a, b);
    key_vec<kAbs>(a).store(out + i);
    key_vec<kAbs>(b).store(out + i + kV);
  }
  for (; i < len; ++i) {
    const float f = static_cast<float>(s[i]);
    out[i] = kAbs ? nm::abs_key(f) : nm::score_key(f);
  }
}

// Groups down the lanes: keys[r * ld + l] is entry r of group l, for lanes
// [0, lanes), lanes a multiple of kV. keep receives -1 (kept) or 0 in the
// same places. M: the group size, or 0 for a run-time m.
template <int M>
inline void select_down(const int32_t* keys, int64_t ld, int64_t lanes, int m_rt, int n,
                 int32_t* keep) {
  const int m = M > 0 ? M : m_rt;
  constexpr int kRows = M > 0 ? M : kMaxM;
  const iVec nv(n);
  for (int64_t l = 0; l < lanes; l += kV) {
    iVec k[kRows], beaten[kRows];
#pragma GCC unroll 32
    for (int r = 0; r < m; ++r) {
      k[r] = iVec::loadu(keys + r * ld + l);
      beaten[r] = iVec(r);
    }
#pragma GCC unroll 32
    for (int i = 1; i < m; ++i) {
#pragma GCC unroll 32
      for (int j = 0; j < i; ++j) {
        const iVec g = k[i] > k[j];  // -1 where i beats j: a count moves from i to j
        beaten[i] = beaten[i] + g;
        beaten[j] = beaten[j] - g;
      }
    }
#pragma GCC unroll 32
    for (int r = 0; r < m; ++r) (beaten[r] < nv).store(keep + r * ld + l);
  }
}

inline void select_down_any(const int32_t* keys, int64_t ld, int64_t lanes, int m, int n,
                     int32_t* keep) {
  switch (m) {
    case 2: return select_down<2>(keys, ld, lanes, m, n, keep);
    case 4: return select_down<4>(keys, ld, lanes, m, n, keep);
    case 8: return select_down<8>(keys, ld, lanes, m, n, keep);
    case 16: return select_down<16>(keys, ld, lanes, m, n, keep);
    case 32: return select_down<32>(keys, ld, lanes, m, n, keep);
    default: return select_down<0>(keys, ld, lanes, m, n, keep);
  }
}

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
constexpr bool kHaveAcross = true;
// Groups down the lanes, in registers: k[r] holds entry r of 8 groups.
template <int M>
inline void select_rows(__m256i (&k)[M], int n) {
  if constexpr (M == 4) {
    // The count below written out for 4 rows, each test n > beaten[i]
    // folded into a constant: with g_ij = (k_i > k_j) (-1 / 0, i > j),
    // beaten[i] = i + sum_{j<i} g_ij - sum_{j>i} g_ji. 18 ops instead of
    // 22, which counts where the selection shares the core with AdamW's
    // divides (SR-STE's mask update).
    const __m256i g10 = _mm256_cmpgt_epi32(k[1], k[0]), g20 = _mm256_cmpgt_epi32(k[2], k[0]);
    const __m256i g30 = _mm256_cmpgt_epi32(k[3], k[0]), g21 = _mm256_cmpgt_epi32(k[2], k[1]);
    const __m256i g31 = _mm256_cmpgt_epi32(k[3], k[1]), g32 = _mm256_cmpgt_epi32(k[3], k[2]);
    k[0] = _mm256_cmpgt_epi32(_mm256_add_epi32(_mm256_add_epi32(g10, g20), g30), _mm256_set1_epi32(-n));
    k[1] = _mm256_cmpgt_epi32(_mm256_set1_epi32(n - 1), _mm256_sub_epi32(_mm256_sub_epi32(g10, g21), g31));
    k[2] = _mm256_cmpgt_epi32(_mm256_set1_epi32(n - 2), _mm256_sub_epi32(_mm256_add_epi32(g20, g21), g32));
    k[3] = _mm256_cmpgt_epi32(_mm256_set1_epi32(n - 3), _mm256_add_epi32(_mm256_add_epi32(g30, g31), g32));
    return;
  }
  __m256i beaten[M];
#pragma GCC unroll 32
  for (int r = 0; r < M; ++r) beaten[r] = _mm256_set1_epi32(r);
#pragma GCC unroll 32
  for (int i = 1; i < M; ++i) {
#pragma GCC unroll 32
    for (int j = 0; j < i; ++j) {
      const __m256i g = _mm256_cmpgt_epi32(k[i], k[j]);
      beaten[i] = _mm256_add_epi32(beaten[i], g);
      beaten[j] = _mm256_sub_epi32(beaten[j], g);
    }
  }
  const __m256i nv = _mm256_set1_epi32(n);
#pragma GCC unroll 32
  for (int r = 0; r < M; ++r) k[r] = _mm256_cmpgt_epi32(nv, beaten[r]);
}

// 4 x 4 transposes within each 128-bit half: four vectors of two groups of
// 4 become entry-r-of-8-groups vectors (its own inverse).
inline void transpose4(__m256i (&v)[4]) {
  const __m256i t0 = _mm256_unpacklo_epi32(v[0], v[1]), t1 = _mm256_unpacklo_epi32(v[2], v[3]);
  const __m256i t2 = _mm256_unpackhi_epi32(v[0], v[1]), t3 = _mm256_unpackhi_epi32(v[2], v[3]);
  v[0] = _mm256_unpacklo_epi64(t0, t1);
  v[1] = _mm256_unpackhi_epi64(t0, t1);
  v[2] = _mm256_unpacklo_epi64(t2, t3);
  v[3] = _mm256_unpackhi_epi64(t2, t3);
}

inline void transpose8(__m256i (&v)[8]) {
  __m256 r[8], t[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) r[i] = _mm256_castsi256_ps(v[i]);
#pragma GCC unroll 4
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
#pragma GCC unroll 2
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    v[i] = _mm256_castps_si256(_mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    v[i + 4] = _mm256_castps_si256(_mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}

// Contiguous groups: len keys of whole groups of M, len a multiple of 8 (M
// = 2) or 8 * M. For m = 2 each lane meets its neighbour through one swap
// (q beats p if k_q > k_p, or k_q == k_p and q < p); otherwise 8 groups at
// a time are transposed in registers to run down the lanes.
template <int M>
inline void select_across(const int32_t* keys, int64_t len, int n, int32_t* keep) {
  static_assert(M == 2 || M == 4 || M % 8 == 0, "groups must tile 8-lane vectors");
  if constexpr (M == 2) {
    // The odd lane of a pair is the higher index: it is beaten by a tie.
    const __m256i odd = _mm256_setr_epi32(0, -1, 0, -1, 0, -1, 0, -1);
    const __m256i nv = _mm256_set1_epi32(n);
    for (int64_t i = 0; i < len; i += 8) {
      const __m256i k = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(keys + i));
      const __m256i o = _mm256_shuffle_epi32(k, _MM_SHUFFLE(2, 3, 0, 1));
      // beaten = (o > k) on even lanes, (o >= k) = 1 + (k > o) on odd lanes.
      __m256i beaten = _mm256_sub_epi32(_mm256_setzero_si256(),
                                        _mm256_andnot_si256(odd, _mm256_cmpgt_epi32(o, k)));
      beaten = _mm256_add_epi32(beaten, _mm256_and_si256(odd, _mm256_add_epi32(
                                                                  _mm256_set1_epi32(1),
                                                                  _mm256_cmpgt_epi32(k, o))));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(keep + i), _mm256_cmpgt_epi32(nv, beaten));
    }
  } else if constexpr (M == 4) {
    for (int64_t i = 0; i < len; i += 8 * M) {
      __m256i v[M];
#pragma GCC unroll 4
      for (int r = 0; r < M; ++r) {
        v[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(keys + i + 8 * r));
      }
      transpose4(v);
      select_rows<M>(v, n);
      transpose4(v);
#pragma GCC unroll 4
      for (int r = 0; r < M; ++r) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(keep + i + 8 * r), v[r]);
      }
    }
  } else {
    // 8 groups at a time: part p (entries 8p .. 8p + 7) of the 8 groups is
    // an 8 x 8 block whose transpose gives rows 8p .. 8p + 7.
    constexpr int kParts = M / 8;
    for (int64_t i = 0; i < len; i += 8 * M) {
      __m256i v[M];
#pragma GCC unroll 4
      for (int p = 0; p < kParts; ++p) {
        __m256i blk[8];
#pragma GCC unroll 8
        for (int g = 0; g < 8; ++g) {
          blk[g] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(keys + i + g * M + 8 * p));
        }
        transpose8(blk);
#pragma GCC unroll 8
        for (int r = 0; r < 8; ++r) v[8 * p + r] = blk[r];
      }
      select_rows<M>(v, n);
#pragma GCC unroll 4
      for (int p = 0; p < kParts; ++p) {
        __m256i blk[8];
#pragma GCC unroll 8
        for (int r = 0; r < 8; ++r) blk[r] = v[8 * p + r];
        transpose8(blk);
#pragma GCC unroll 8
        for (int g = 0; g < 8; ++g) {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(keep + i + g * M + 8 * p), blk[g]);
        }
      }
    }
  }
}
#else
constexpr bool kHaveAcross = false;
template <int M>
inline void select_across(const int32_t*, int64_t, int, int32_t*) {}
#endif

inline bool across_ok(int m) {
  return kHaveAcross && (m == 2 || m == 4 || m == 8 || m == 16 || m == 32);
}

struct Buffers {
  alignas(64) int32_t keys[kBufElems];
  alignas(64) int32_t down[kBufElems];
  alignas(64) int32_t keep[kBufElems];
};

// How a tensor of numel elements, grouped along a dim of layout L, splits
// into units.
struct Units {
  GroupLayout layout{};
  // Contiguous groups (inner == 1): groups per block. Strided: columns per
  // tile, tiles per row block.
  int64_t block_groups = 0;
  int64_t tile_cols = 0;
  int64_t col_tiles = 0;
  int64_t count = 0;       // blocks or tiles
  int64_t unit_elems = 0;  // elements of a full one
};

inline Units make_units(const GroupLayout& L, int64_t numel, int64_t m) {
  Units U;
  U.layout = L;
  if (L.inner == 1) {
    U.block_groups = std::max<int64_t>(1, kBlockElems / m);
    const int64_t groups = numel / m;
    U.count = (groups + U.block_groups - 1) / U.block_groups;
    U.unit_elems = U.block_groups * m;
  } else {
    U.tile_cols = std::max<int64_t>(kV, kBlockElems / m / kV * kV);
    U.col_tiles = (L.inner + U.tile_cols - 1) / U.tile_cols;
    U.count = (numel / (m * L.inner)) * U.col_tiles;
    U.unit_elems = m * std::min(U.tile_cols, L.inner);
  }
  return U;
}

// Block b of a walk whose groups are contiguous runs of m.
template <typename Keys, typename Write>
void contiguous_block(const Units& U, int64_t b, int m, int n, Buffers& buf, const Keys& keys,
                      const Write& write) {
  const int64_t groups = U.layout.outer * U.layout.size / m;
  const int64_t g0 = b * U.block_groups;
  const int64_t ng = std::min(U.block_groups, groups - g0);
  const int64_t offset = g0 * m, len = ng * m;
  keys(offset, len, buf.keys);
  if (across_ok(m)) {
    const int64_t step = m == 2 ? 8 : 8 * m;
    const int64_t padded = (len + step - 1) / step * step;
    std::fill(buf.keys + len, buf.keys + padded, 0);
    switch (m) {
      case 2: select_across<2>(buf.keys, padded, n, buf.keep); break;
      case 4: select_across<4>(buf.keys, padded, n, buf.keep); break;
      case 8: select_across<8>(buf.keys, padded, n, buf.keep); break;
      case 16: select_across<16>(buf.keys, padded, n, buf.keep); break;
      default: select_across<32>(buf.keys, padded, n, buf.keep); break;
    }
  } else {
    // Transpose into groups down the lanes and back.
    const int64_t ld = (ng + kV - 1) / kV * kV;
    for (int r = 0; r < m; ++r) {
      int32_t* row = buf.down + r * ld;
      for (int64_t g = 0; g < ng; ++g) row[g] = buf.keys[g * m + r];
      std::fill(row + ng, row + ld, 0);
    }
    select_down_any(buf.down, ld, ld, m, n, buf.keys);  // keys are consumed: reuse
    for (int r = 0; r < m; ++r) {
      const int32_t* row = buf.keys + r * ld;
      for (int64_t g = 0; g < ng; ++g) buf.keep[g * m + r] = row[g];
    }
  }
  write(offset, buf.keep, len);
}

// Tile t of a strided walk: m rows of one row block (a group index of one
// outer index), tile_cols neighbouring columns.
template <typename Keys, typename Write>
void strided_tile(const Units& U, int64_t t, int m, int n, Buffers& buf, const Keys& keys,
                  const Write& write) {
  const GroupLayout& L = U.layout;
  const int64_t row_block = t / U.col_tiles;
  const int64_t c0 = (t % U.col_tiles) * U.tile_cols;
  const int64_t w = std::min(U.tile_cols, L.inner - c0);
  const int64_t ld = (w + kV - 1) / kV * kV;
  const int64_t base = row_block * m * L.inner + c0;  // (o * size + g * m) * inner + c0
  for (int r = 0; r < m; ++r) {
    keys(base + r * L.inner, w, buf.keys + r * ld);
    std::fill(buf.keys + r * ld + w, buf.keys + (r + 1) * ld, 0);
  }
  select_down_any(buf.keys, ld, ld, m, n, buf.keep);
  for (int r = 0; r < m; ++r) write(base + r * L.inner, buf.keep + r * ld, w);
}

template <typename Keys, typename Write>
void run_unit(const Units& U, int64_t u, int m, int n, Buffers& buf, const Keys& keys,
              const Write& write) {
  if (U.layout.inner == 1) {
    contiguous_block(U, u, m, n, buf, keys, write);
  } else {
    strided_tile(U, u, m, n, buf, keys, write);
  }
}

// Pieces of about kChunk elements over every walk's units, for one
// parallel loop: {walk, first unit, end unit}.
inline std::vector<Chunk> unit_pieces(const std::vector<Units>& walks) {
  std::vector<Chunk> pieces;
  for (int64_t i = 0; i < static_cast<int64_t>(walks.size()); ++i) {
    const int64_t per = std::max<int64_t>(1, kChunk / std::max<int64_t>(1, walks[i].unit_elems));
    for (int64_t u = 0; u < walks[i].count; u += per) {
      pieces.push_back({i, u, std::min(walks[i].count, u + per)});
    }
  }
  return pieces;
}

}  // namespace nm_block
}  // namespace cpu
}  // namespace mgpp_ext
