// Shared declarations of the robustdistill kernels.
//
// ops.cpp holds the operator schemas, argument checking and layout handling (device-agnostic);
// cpu_kernels.cpp and cuda_kernels.cu hold the kernels, which see only raw pointers described
// by the structs below. Element-wise arithmetic goes through the functions at the end of this file
// so that CPU and CUDA round exactly like the eager reference (one rounding per PyTorch op, no
// fused multiply-add), which makes the fp32 L-inf step bit-identical to robustdistill.ops.pgd_step_ref.
#pragma once

#include <cmath>
#include <cstdint>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/core/ScalarType.h>

namespace robustdistill {

// How `out` relates to the inputs (the CPU kernels pick a loop free of possible aliasing).
enum class PgdAliasing : int {
  kNone = 0,     // out overlaps no input
  kInPlace = 1,  // out is x_adv (same memory and strides); grad and x overlap neither
  kOther = 2,    // anything else that is still safe element by element (e.g. x_adv is x)
};

// One projected ascent step over `numel` elements laid out as `batch` samples of `per_sample`
// contiguous elements each (the batch is the outermost dimension in memory).
struct PgdArgs {
  const void* x_adv = nullptr;
  const void* grad = nullptr;
  const void* x = nullptr;
  void* out = nullptr;  // may equal x_adv (in-place step); never partially overlaps an input
  PgdAliasing aliasing = PgdAliasing::kOther;
  int64_t numel = 0;
  int64_t batch = 1;
  int64_t per_sample = 0;
  c10::ScalarType dtype = c10::ScalarType::Float;
  bool l2 = false;
  double eps = 0.0;
  double alpha = 0.0;
  double lo = 0.0;
  double hi = 1.0;
  // Per-sample eps / step size, `batch` values of the op-math type (float, or double for
  // double inputs) on the inputs' device; nullptr means "use the scalar".
  const void* eps_per_sample = nullptr;
  const void* alpha_per_sample = nullptr;
};

enum class FdDistance : int { KL = 0, L1 = 1, L2 = 2 };

// IGDM's finite-difference alignment over logits [rows, cols], all contiguous.
// Student logits have dtype `s_dtype`; teacher logits `t_dtype`, which is either `s_dtype` or
// the op-math type. Results (`out`, `row_buf`, `grad_out`) have the op-math type.
struct FdArgs {
  const void* s_plus = nullptr;
  const void* s_minus = nullptr;
  const void* t_plus = nullptr;
  const void* t_minus = nullptr;
  c10::ScalarType s_dtype = c10::ScalarType::Float;
  c10::ScalarType t_dtype = c10::ScalarType::Float;
  int64_t rows = 0;
  int64_t cols = 0;
  FdDistance distance = FdDistance::KL;
  // forward
  void* out = nullptr;      // scalar result
  void* row_buf = nullptr;  // workspace, `rows` values (used by the CUDA kernels)
  // backward
  const void* grad_out = nullptr;  // scalar upstream gradient
  void* grad_s_plus = nullptr;     // [rows, cols] of s_dtype
  void* grad_s_minus = nullptr;    // [rows, cols] of s_dtype
};

template <typename S>
struct TypeTag {
  using type = S;
};

// Calls fn(TypeTag<S>{}, TypeTag<T>{}) for the student logits' dtype S and the teacher logits'
// dtype T, which ops.cpp makes either S or S's op-math type.
template <typename Fn>
void dispatch_fd(const FdArgs& args, const Fn& fn) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.s_dtype, "robustdistill::fd_align", [&] {
    if (args.t_dtype == args.s_dtype) {
      fn(TypeTag<scalar_t>{}, TypeTag<scalar_t>{});
    } else {
      fn(TypeTag<scalar_t>{}, TypeTag<at::opmath_type<scalar_t>>{});
    }
  });
}

void pgd_step_cpu(const PgdArgs& args);
void fd_align_forward_cpu(const FdArgs& args);
void fd_align_backward_cpu(const FdArgs& args);

#ifdef ROBUSTDISTILL_WITH_CUDA
// Launch on the current CUDA stream of the current device; the caller sets the device.
void pgd_step_cuda(const PgdArgs& args);
void fd_align_forward_cuda(const FdArgs& args);
void fd_align_backward_cuda(const FdArgs& args);
#endif

// ---------------------------------------------------------------------------------------------
// Element-wise arithmetic shared by the CPU and CUDA kernels.

#if defined(__CUDACC__)
#define RD_HD __host__ __device__ __forceinline__
#else
#define RD_HD inline
#endif

// Round-to-nearest add / mul that the compiler may not contract into an FMA (nvcc contracts
// a*b+c by default; the host build uses -ffp-contract=off).
RD_HD float rd_add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
RD_HD double rd_add(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
RD_HD float rd_sub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
RD_HD double rd_sub(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
RD_HD float rd_mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
RD_HD double rd_mul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

// torch.clamp: min(max(v, lo), hi), NaN in v propagates.
template <typename A>
RD_HD A rd_clamp(A v, A lo, A hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

// torch.sign: -1, 0 or 1; NaN gives 0.
template <typename A>
RD_HD A rd_sign(A g) {
  return static_cast<A>(g > A(0)) - static_cast<A>(g < A(0));
}

// One L-inf element: clamp(x + clamp((x_adv + alpha*sign(g)) - x, -eps, eps), lo, hi).
template <typename A>
RD_HD A rd_linf_elem(A xa, A g, A x, A eps, A alpha, A lo, A hi) {
  A stepped = rd_add(xa, rd_mul(alpha, rd_sign(g)));
  A delta = rd_clamp(rd_sub(stepped, x), -eps, eps);
  return rd_clamp(rd_add(x, delta), lo, hi);
}

// One L2 element given the sample's gradient divisor (max(||g||, 1e-12)), whether the gradient
// is non-zero, and the projection factor min(eps / max(||delta||, 1e-12), 1).
template <typename A>
RD_HD A rd_l2_elem(A xa, A g, A x, A alpha, A g_div, bool has_dir, A factor, A lo, A hi) {
  A dir = has_dir ? g / g_div : A(0);
  A delta = rd_sub(rd_add(xa, rd_mul(alpha, dir)), x);
  delta = rd_mul(delta, factor);
  return rd_clamp(rd_add(x, delta), lo, hi);
}

// Per-sample L2 coefficients from the sums over the sample of g*g, u*u and u*g, u = x_adv - x.
// ||delta||^2 = ||u + alpha*g/g_div||^2 is expanded so one reduction pass suffices. When the
// projection is active (||delta|| >= eps) the expansion loses at most a few ulps.
template <typename A>
struct L2Coef {
  A g_div;
  bool has_dir;
  A factor;
};

template <typename A>
RD_HD L2Coef<A> rd_l2_coef(double sum_gg, double sum_uu, double sum_ug, A alpha, A eps) {
  L2Coef<A> c;
  double g_norm = ::sqrt(sum_gg);
  A g_norm_a = static_cast<A>(g_norm);
  c.has_dir = g_norm_a > A(0);  // false for NaN, as torch.where(g_norm > 0, ...)
  c.g_div = g_norm_a < A(1e-12) ? A(1e-12) : g_norm_a;
  double d2 = sum_uu;
  if (c.has_dir) {
    double a = static_cast<double>(alpha);
    double gd = static_cast<double>(c.g_div);
    d2 = sum_uu + 2.0 * a * sum_ug / gd + a * a * (sum_gg / (gd * gd));
  }
  d2 = d2 < 0.0 ? 0.0 : d2;
  A d_norm = static_cast<A>(::sqrt(d2));  // NaN stays NaN
  A ratio = eps / (d_norm < A(1e-12) ? A(1e-12) : d_norm);
  c.factor = ratio > A(1) ? A(1) : ratio;  // NaN stays NaN
  return c;
}

}  // namespace robustdistill
