/*
 * Written for mlcpatch (Apache-2.0): the apache-tvm wheel lacks this header. Conversions
 * between IEEE-754 binary formats given by their bit layout (representation type and number
 * of significand bits), e.g. half <-> float for sorting and random fill of float16 tensors.
 * Widening is exact; narrowing rounds to nearest, ties to even, like the hardware does.
 */
#ifndef MLCPATCH_BUILTIN_FP16_H_
#define MLCPATCH_BUILTIN_FP16_H_

#include <cstdint>
#include <cstring>

namespace mlcpatch_fp {

template <typename Rep, int SigBits>
struct Layout {
  static constexpr int kBits = static_cast<int>(sizeof(Rep) * 8);
  static constexpr int kExpBits = kBits - SigBits - 1;
  static constexpr Rep kExpMax = static_cast<Rep>((Rep(1) << kExpBits) - 1);  // inf / NaN
  static constexpr int kBias = (1 << (kExpBits - 1)) - 1;
  static constexpr Rep kSigMask = static_cast<Rep>((Rep(1) << SigBits) - 1);
};

template <typename To, typename From>
inline To BitCast(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "bit cast between different sizes");
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}

/*! \brief Drop `shift` low bits of `value`, rounding to nearest, ties to even. */
template <typename Rep>
inline Rep ShiftRightRounded(Rep value, int shift) {
  if (shift <= 0) return value;
  if (shift >= static_cast<int>(sizeof(Rep) * 8)) return 0;  // below half of the last unit
  Rep kept = value >> shift;
  Rep rest = value & ((Rep(1) << shift) - 1);
  Rep half = Rep(1) << (shift - 1);
  if (rest > half || (rest == half && (kept & 1))) ++kept;
  return kept;
}

}  // namespace mlcpatch_fp

/*! \brief Widen (e.g. half -> float); exact for every input, NaN payloads kept. */
template <typename SrcT, typename SrcRepT, int SrcSigBits, typename DstT, typename DstRepT,
          int DstSigBits>
inline DstT __extendXfYf2__(SrcT a) {
  using S = mlcpatch_fp::Layout<SrcRepT, SrcSigBits>;
  using D = mlcpatch_fp::Layout<DstRepT, DstSigBits>;
  const SrcRepT bits = mlcpatch_fp::BitCast<SrcRepT>(a);
  const DstRepT sign = static_cast<DstRepT>(bits >> (S::kBits - 1)) << (D::kBits - 1);
  SrcRepT exp = (bits >> SrcSigBits) & S::kExpMax;
  SrcRepT sig = bits & S::kSigMask;
  DstRepT out_exp;
  DstRepT out_sig;
  if (exp == S::kExpMax) {
    out_exp = D::kExpMax;
    out_sig = static_cast<DstRepT>(sig) << (DstSigBits - SrcSigBits);
  } else if (exp == 0 && sig == 0) {
    out_exp = 0;
    out_sig = 0;
  } else if (exp == 0) {
    // A subnormal source is a normal destination: move the leading one to the implicit bit.
    int shift = 0;
    while ((sig & (SrcRepT(1) << SrcSigBits)) == 0) {
      sig = static_cast<SrcRepT>(sig << 1);
      ++shift;
    }
    out_exp = static_cast<DstRepT>(1 - S::kBias - shift + D::kBias);
    out_sig = static_cast<DstRepT>(sig & S::kSigMask) << (DstSigBits - SrcSigBits);
  } else {
    out_exp = static_cast<DstRepT>(static_cast<int>(exp) - S::kBias + D::kBias);
    out_sig = static_cast<DstRepT>(sig) << (DstSigBits - SrcSigBits);
  }
  const DstRepT out = sign | static_cast<DstRepT>(out_exp << DstSigBits) | out_sig;
  return mlcpatch_fp::BitCast<DstT>(out);
}

/*! \brief Narrow (e.g. float -> half) with round-to-nearest-even; overflow gives infinity. */
template <typename SrcT, typename SrcRepT, int SrcSigBits, typename DstT, typename DstRepT,
          int DstSigBits>
inline DstT __truncXfYf2__(SrcT a) {
  using S = mlcpatch_fp::Layout<SrcRepT, SrcSigBits>;
  using D = mlcpatch_fp::Layout<DstRepT, DstSigBits>;
  const SrcRepT bits = mlcpatch_fp::BitCast<SrcRepT>(a);
  const DstRepT sign = static_cast<DstRepT>(static_cast<DstRepT>(bits >> (S::kBits - 1))
                                            << (D::kBits - 1));
  const SrcRepT exp = (bits >> SrcSigBits) & S::kExpMax;
  const SrcRepT sig = bits & S::kSigMask;
  constexpr DstRepT kInf = static_cast<DstRepT>(D::kExpMax << DstSigBits);
  DstRepT out;
  if (exp == S::kExpMax) {
    // Keep NaNs NaN (quiet bit set, top payload bits kept); infinities stay infinite.
    out = sig == 0 ? kInf
                   : static_cast<DstRepT>(kInf | (DstRepT(1) << (DstSigBits - 1)) |
                                          static_cast<DstRepT>(sig >> (SrcSigBits - DstSigBits)));
  } else {
    const SrcRepT mant = exp == 0 ? sig : static_cast<SrcRepT>(sig | (SrcRepT(1) << SrcSigBits));
    const int unbiased = exp == 0 ? 1 - S::kBias : static_cast<int>(exp) - S::kBias;
    const int out_exp = unbiased + D::kBias;
    if (out_exp >= static_cast<int>(D::kExpMax)) {
      out = kInf;
    } else if (out_exp >= 1) {
      SrcRepT kept = mlcpatch_fp::ShiftRightRounded(mant, SrcSigBits - DstSigBits);
      // Rounding may carry into the next binade; the exponent field absorbs it by addition.
      out = static_cast<DstRepT>((static_cast<SrcRepT>(out_exp - 1) << DstSigBits) + kept);
      if (out >= kInf) out = kInf;
    } else {
      // Subnormal result: one more bit of shift per step below the smallest normal exponent.
      SrcRepT kept = mlcpatch_fp::ShiftRightRounded(mant, SrcSigBits - DstSigBits + 1 - out_exp);
      out = static_cast<DstRepT>(kept);
    }
  }
  return mlcpatch_fp::BitCast<DstT>(static_cast<DstRepT>(sign | out));
}

#endif  // MLCPATCH_BUILTIN_FP16_H_

