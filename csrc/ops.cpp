// Operator schemas of the `robustdistill` namespace, argument checks and memory-layout handling,
// and the CPU / CUDA registrations. The kernels themselves are in cpu_kernels.cpp and
// cuda_kernels.cu. Fake (meta) implementations and the autograd formula of fd_align are
// registered from Python (robustdistill/_ext.py).
#include "rd_ops.h"

#include <optional>
#include <string_view>
#include <tuple>

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/DeviceGuard.h>
#include <torch/library.h>

namespace robustdistill {
namespace {

using at::Tensor;

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

at::ScalarType op_math(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

bool same_layout(const Tensor& a, const Tensor& b) { return a.sizes() == b.sizes() && a.strides() == b.strides(); }

// Every sample occupies one contiguous span of numel/B elements (true for contiguous and
// channels_last tensors; the tensor must be non-overlapping and dense).
bool batch_outermost(const Tensor& t) {
  if (t.dim() == 0 || t.size(0) <= 1) return true;
  return t.stride(0) == t.numel() / t.size(0);
}

// eps / step size as the kernels use them: rounded to the input dtype (a no-op for float32 and
// float64), as the reference does with per-sample values (`value.to(x.dtype)`); a scalar is rounded
// the same way, so a scalar and the same value per sample give the same result in fp16/bf16.
double round_to(double value, at::ScalarType dtype) {
  if (dtype == at::kHalf) return static_cast<float>(c10::Half(static_cast<float>(value)));
  if (dtype == at::kBFloat16) return static_cast<float>(c10::BFloat16(static_cast<float>(value)));
  return value;
}

// The kernel of device type `kernel` runs on x_adv, grad and x: they must be there, on one device.
// (The dispatcher picks the kernel from every tensor argument, an optional one included.)
void check_devices(const char* op, c10::DeviceType kernel, const Tensor& x_adv, const Tensor& grad, const Tensor& x) {
  TORCH_CHECK(x_adv.device() == x.device() && grad.device() == x.device(), "robustdistill::", op,
              ": x_adv, grad and x must be on one device; got ", x_adv.device(), ", ", grad.device(), ", ",
              x.device());
  TORCH_CHECK(x.device().type() == kernel, "robustdistill::", op, ": x_adv, grad and x are on ", x.device(),
              " but another argument is on ", c10::DeviceTypeName(kernel, /*lower_case=*/true),
              "; move the per-sample eps / step size to ", x.device());
}

// eps / step size per sample: `batch` values of the op-math type on x's device, cast through x's
// dtype first as the reference does. A tensor on another device is an error (moving it on every
// call would synchronise with the host and cannot be captured in a CUDA graph), except a 0-dim CPU
// tensor with inputs elsewhere, which PyTorch treats as a number: it is read on the host (no device
// synchronisation; under CUDA-graph capture its value at capture time is used).
struct PerSample {
  Tensor values;                 // [batch] on x's device, or undefined
  std::optional<double> scalar;  // a 0-dim CPU tensor read on the host
};

PerSample per_sample_values(const std::optional<Tensor>& value, const char* name, const Tensor& x, int64_t batch) {
  PerSample result;
  if (!value.has_value() || !value->defined()) return result;
  const Tensor& v = *value;
  TORCH_CHECK(!v.is_complex() && v.scalar_type() != at::kBool, "robustdistill::pgd_step: ", name,
              " must be a real tensor; got ", v.scalar_type());
  TORCH_CHECK(v.numel() == batch || v.numel() == 1, "robustdistill::pgd_step: ", name,
              " must hold one value per sample (", batch, ") or a single value; got shape ", v.sizes());
  if (v.device() != x.device()) {
    TORCH_CHECK(v.is_cpu() && v.dim() == 0, "robustdistill::pgd_step: ", name, " is on ", v.device(),
                " but x_adv, grad and x are on ", x.device(), "; create it on ", x.device(),
                " once, outside the attack loop (a copy on every step would synchronise with the host)");
    result.scalar = v.item<double>();
    return result;
  }
  Tensor t = v.reshape({-1}).to(x.scalar_type()).to(op_math(x.scalar_type()));
  if (t.numel() != batch) t = t.expand({batch});
  result.values = t.contiguous();
  return result;
}

using PgdLauncher = void (*)(const PgdArgs&);

// Writes the step into `out` (a fresh tensor, or x_adv itself for the in-place op).
// Fast path: x_adv, grad, x and out share sizes and strides and are non-overlapping and dense, so
// memory is processed as one flat array whatever the layout (contiguous, channels_last, ...).
// Anything else is computed on contiguous copies and copied into `out`.
void pgd_compute(const Tensor& out, const Tensor& x_adv, const Tensor& grad, const Tensor& x, double eps,
                 double step_size, const std::optional<Tensor>& eps_per_sample,
                 const std::optional<Tensor>& step_per_sample, std::string_view norm, double lo, double hi,
                 c10::DeviceType kernel, PgdLauncher launch) {
  TORCH_CHECK(norm == "linf" || norm == "l2", "robustdistill::pgd_step: unknown norm '", norm,
              "'; use 'linf' or 'l2'");
  TORCH_CHECK(is_supported_float(x.scalar_type()),
              "robustdistill::pgd_step supports float32, float64, float16 and bfloat16 inputs; got ",
              x.scalar_type());
  TORCH_CHECK(x_adv.scalar_type() == x.scalar_type() && grad.scalar_type() == x.scalar_type(),
              "robustdistill::pgd_step: x_adv, grad and x must share one dtype; got ", x_adv.scalar_type(), ", ",
              grad.scalar_type(), ", ", x.scalar_type());
  TORCH_CHECK(x_adv.sizes() == x.sizes() && grad.sizes() == x.sizes(),
              "robustdistill::pgd_step: x_adv, grad and x must have the same shape; got ", x_adv.sizes(), ", ",
              grad.sizes(), ", ", x.sizes());
  check_devices("pgd_step", kernel, x_adv, grad, x);
  const bool l2 = norm == "l2";
  TORCH_CHECK(!l2 || x.dim() >= 1, "robustdistill::pgd_step: the L2 step needs a batch dimension");
  const int64_t batch = x.dim() > 0 ? x.size(0) : 1;
  const PerSample eps_v = per_sample_values(eps_per_sample, "eps_per_sample", x, batch);
  const PerSample alpha_v = per_sample_values(step_per_sample, "step_per_sample", x, batch);
  const Tensor& eps_t = eps_v.values;
  const Tensor& alpha_t = alpha_v.values;
  const int64_t numel = x.numel();
  if (numel == 0) return;
  const bool per_sample = l2 || eps_t.defined() || alpha_t.defined();

  bool direct = x_adv.is_non_overlapping_and_dense() && same_layout(grad, x_adv) && same_layout(x, x_adv) &&
                same_layout(out, x_adv) && (!per_sample || batch_outermost(x_adv));
  at::MemOverlapStatus overlap[3] = {at::MemOverlapStatus::No, at::MemOverlapStatus::No, at::MemOverlapStatus::No};
  if (direct) {
    int k = 0;
    for (const Tensor* input : {&x_adv, &grad, &x}) {
      overlap[k] = at::get_overlap_status(out, *input);
      if (overlap[k] == at::MemOverlapStatus::Partial || overlap[k] == at::MemOverlapStatus::TooHard) direct = false;
      ++k;
    }
  }
  PgdAliasing aliasing = PgdAliasing::kNone;  // the contiguous copies below write a fresh tensor
  if (direct && (overlap[1] != at::MemOverlapStatus::No || overlap[2] != at::MemOverlapStatus::No)) {
    aliasing = PgdAliasing::kOther;
  } else if (direct && overlap[0] != at::MemOverlapStatus::No) {
    aliasing = PgdAliasing::kInPlace;
  }
  Tensor xa_c = x_adv, g_c = grad, x_c = x, out_c = out;
  if (!direct) {
    xa_c = x_adv.contiguous();
    g_c = grad.contiguous();
    x_c = x.contiguous();
    out_c = at::empty(x.sizes(), x.options());
  }
  PgdArgs args;
  args.x_adv = xa_c.data_ptr();
  args.grad = g_c.data_ptr();
  args.x = x_c.data_ptr();
  args.out = out_c.data_ptr();
  args.aliasing = aliasing;
  args.numel = numel;
  args.batch = batch;
  args.per_sample = numel / batch;
  args.dtype = x.scalar_type();
  args.l2 = l2;
  args.eps = round_to(eps_v.scalar.value_or(eps), x.scalar_type());
  args.alpha = round_to(alpha_v.scalar.value_or(step_size), x.scalar_type());
  args.lo = lo;
  args.hi = hi;
  args.eps_per_sample = eps_t.defined() ? eps_t.data_ptr() : nullptr;
  args.alpha_per_sample = alpha_t.defined() ? alpha_t.data_ptr() : nullptr;
  launch(args);
  if (!direct) out.copy_(out_c);
}

template <c10::DeviceType Kernel, PgdLauncher Launch>
Tensor pgd_step_impl(const Tensor& x_adv, const Tensor& grad, const Tensor& x, double eps, double step_size,
                     const std::optional<Tensor>& eps_per_sample, const std::optional<Tensor>& step_per_sample,
                     std::string_view norm, double lo, double hi) {
  const at::OptionalDeviceGuard guard(at::device_of(x));
  Tensor out = at::empty_like(x_adv);
  pgd_compute(out, x_adv, grad, x, eps, step_size, eps_per_sample, step_per_sample, norm, lo, hi, Kernel, Launch);
  return out;
}

template <c10::DeviceType Kernel, PgdLauncher Launch>
void pgd_step_inplace_impl(const Tensor& x_adv, const Tensor& grad, const Tensor& x, double eps, double step_size,
                           const std::optional<Tensor>& eps_per_sample,
                           const std::optional<Tensor>& step_per_sample, std::string_view norm, double lo,
                           double hi) {
  const at::OptionalDeviceGuard guard(at::device_of(x));
  at::assert_no_internal_overlap(x_adv);
  pgd_compute(x_adv, x_adv, grad, x, eps, step_size, eps_per_sample, step_per_sample, norm, lo, hi, Kernel, Launch);
}

// ---------------------------------------------------------------------------------------------
// fd_align

FdDistance parse_distance(std::string_view distance) {
  if (distance == "kl") return FdDistance::KL;
  if (distance == "l1") return FdDistance::L1;
  if (distance == "l2") return FdDistance::L2;
  TORCH_CHECK(false, "robustdistill::fd_align: unknown distance '", distance, "'; choose one of kl, l1, l2");
}

struct FdInputs {
  Tensor s_plus, s_minus, t_plus, t_minus;
  at::ScalarType acc;
};

// Computation is in float32 (float64 only when all four inputs are float64). The kernels read
// student logits of one dtype S and teacher logits of S or the op-math type; other mixes are
// upcast here, which is exact.
FdInputs prepare_fd(const char* op, c10::DeviceType kernel, const Tensor& s_plus, const Tensor& s_minus,
                    const Tensor& t_plus, const Tensor& t_minus) {
  TORCH_CHECK(s_plus.dim() == 2, "robustdistill::fd_align expects logits of shape [B, C]; got s_plus of shape ",
              s_plus.sizes());
  TORCH_CHECK(s_minus.sizes() == s_plus.sizes() && t_plus.sizes() == s_plus.sizes() &&
                  t_minus.sizes() == s_plus.sizes(),
              "robustdistill::fd_align: the four logit tensors must have one shape; got ", s_plus.sizes(), ", ",
              s_minus.sizes(), ", ", t_plus.sizes(), ", ", t_minus.sizes());
  for (const Tensor* t : {&s_plus, &s_minus, &t_plus, &t_minus}) {
    TORCH_CHECK(is_supported_float(t->scalar_type()),
                "robustdistill::fd_align supports float32, float64, float16 and bfloat16 logits; got ",
                t->scalar_type());
    TORCH_CHECK(t->device() == s_plus.device(), "robustdistill::", op, ": logits must be on one device; got ",
                s_plus.device(), " and ", t->device());
  }
  TORCH_CHECK(s_plus.device().type() == kernel, "robustdistill::", op, ": the logits are on ", s_plus.device(),
              " but another argument is on ", c10::DeviceTypeName(kernel, /*lower_case=*/true));
  const bool all_double = s_plus.scalar_type() == at::kDouble && s_minus.scalar_type() == at::kDouble &&
                          t_plus.scalar_type() == at::kDouble && t_minus.scalar_type() == at::kDouble;
  FdInputs in;
  in.acc = all_double ? at::kDouble : at::kFloat;
  auto narrow = [&](const Tensor& t) { return (!all_double && t.scalar_type() == at::kDouble) ? t.to(at::kFloat) : t; };
  in.s_plus = narrow(s_plus);
  in.s_minus = narrow(s_minus);
  in.t_plus = narrow(t_plus);
  in.t_minus = narrow(t_minus);
  if (in.s_plus.scalar_type() != in.s_minus.scalar_type()) {
    in.s_plus = in.s_plus.to(in.acc);
    in.s_minus = in.s_minus.to(in.acc);
  }
  if (in.t_plus.scalar_type() != in.t_minus.scalar_type() ||
      (in.t_plus.scalar_type() != in.s_plus.scalar_type() && in.t_plus.scalar_type() != in.acc)) {
    in.t_plus = in.t_plus.to(in.acc);
    in.t_minus = in.t_minus.to(in.acc);
  }
  in.s_plus = in.s_plus.contiguous();
  in.s_minus = in.s_minus.contiguous();
  in.t_plus = in.t_plus.contiguous();
  in.t_minus = in.t_minus.contiguous();
  return in;
}

FdArgs fd_args(const FdInputs& in, std::string_view distance) {
  FdArgs a;
  a.s_plus = in.s_plus.data_ptr();
  a.s_minus = in.s_minus.data_ptr();
  a.t_plus = in.t_plus.data_ptr();
  a.t_minus = in.t_minus.data_ptr();
  a.s_dtype = in.s_plus.scalar_type();
  a.t_dtype = in.t_plus.scalar_type();
  a.rows = in.s_plus.size(0);
  a.cols = in.s_plus.size(1);
  a.distance = parse_distance(distance);
  return a;
}

using FdLauncher = void (*)(const FdArgs&);

template <c10::DeviceType Kernel, FdLauncher Launch>
Tensor fd_align_impl(const Tensor& s_plus, const Tensor& s_minus, const Tensor& t_plus, const Tensor& t_minus,
                     std::string_view distance) {
  const at::OptionalDeviceGuard guard(at::device_of(s_plus));
  const FdInputs in = prepare_fd("fd_align", Kernel, s_plus, s_minus, t_plus, t_minus);
  FdArgs a = fd_args(in, distance);
  const auto opts = s_plus.options().dtype(in.acc);
  Tensor out = at::empty({}, opts);
  Tensor row_buf = at::empty({a.rows}, opts);
  a.out = out.data_ptr();
  a.row_buf = row_buf.data_ptr();
  Launch(a);
  return out;
}

template <c10::DeviceType Kernel, FdLauncher Launch>
std::tuple<Tensor, Tensor> fd_align_backward_impl(const Tensor& grad, const Tensor& s_plus, const Tensor& s_minus,
                                                  const Tensor& t_plus, const Tensor& t_minus,
                                                  std::string_view distance) {
  const at::OptionalDeviceGuard guard(at::device_of(s_plus));
  TORCH_CHECK(grad.numel() == 1, "robustdistill::fd_align_backward: grad must be a scalar; got shape ",
              grad.sizes());
  const FdInputs in = prepare_fd("fd_align_backward", Kernel, s_plus, s_minus, t_plus, t_minus);
  TORCH_CHECK(grad.device() == s_plus.device(), "robustdistill::fd_align_backward: grad is on ", grad.device(),
              " but the logits are on ", s_plus.device());
  FdArgs a = fd_args(in, distance);
  const Tensor go = grad.to(in.acc).reshape({}).contiguous();
  Tensor grad_plus = at::empty(in.s_plus.sizes(), in.s_plus.options());
  Tensor grad_minus = at::empty(in.s_minus.sizes(), in.s_minus.options());
  a.grad_out = go.data_ptr();
  a.grad_s_plus = grad_plus.data_ptr();
  a.grad_s_minus = grad_minus.data_ptr();
  Launch(a);
  return {grad_plus.to(s_plus.scalar_type()), grad_minus.to(s_minus.scalar_type())};
}

}  // namespace
}  // namespace robustdistill

TORCH_LIBRARY(robustdistill, m) {
  // Fake implementations live in this Python module; torch imports it when it needs them.
  m.set_python_module("robustdistill._ext");
  m.def(
      "pgd_step(Tensor x_adv, Tensor grad, Tensor x, float eps, float step_size, Tensor? eps_per_sample=None, "
      "Tensor? step_per_sample=None, str norm=\"linf\", float lo=0., float hi=1.) -> Tensor");
  m.def(
      "pgd_step_(Tensor(a!) x_adv, Tensor grad, Tensor x, float eps, float step_size, "
      "Tensor? eps_per_sample=None, Tensor? step_per_sample=None, str norm=\"linf\", float lo=0., "
      "float hi=1.) -> ()");
  m.def("fd_align(Tensor s_plus, Tensor s_minus, Tensor t_plus, Tensor t_minus, str distance=\"kl\") -> Tensor");
  m.def(
      "fd_align_backward(Tensor grad, Tensor s_plus, Tensor s_minus, Tensor t_plus, Tensor t_minus, "
      "str distance=\"kl\") -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(robustdistill, CPU, m) {
  using namespace robustdistill;
  constexpr auto kCPU = c10::DeviceType::CPU;
  m.impl("pgd_step", &pgd_step_impl<kCPU, pgd_step_cpu>);
  m.impl("pgd_step_", &pgd_step_inplace_impl<kCPU, pgd_step_cpu>);
  m.impl("fd_align", &fd_align_impl<kCPU, fd_align_forward_cpu>);
  m.impl("fd_align_backward", &fd_align_backward_impl<kCPU, fd_align_backward_cpu>);
}

#ifdef ROBUSTDISTILL_WITH_CUDA
TORCH_LIBRARY_IMPL(robustdistill, CUDA, m) {
  using namespace robustdistill;
  constexpr auto kCUDA = c10::DeviceType::CUDA;
  m.impl("pgd_step", &pgd_step_impl<kCUDA, pgd_step_cuda>);
  m.impl("pgd_step_", &pgd_step_inplace_impl<kCUDA, pgd_step_cuda>);
  m.impl("fd_align", &fd_align_impl<kCUDA, fd_align_forward_cuda>);
  m.impl("fd_align_backward", &fd_align_backward_impl<kCUDA, fd_align_backward_cuda>);
}
#endif

// Digest of the sources this library was built from (see robustdistill/_build.py), so a stale
// in-place build can be detected; 0 when the build did not say.
#ifndef ROBUSTDISTILL_SOURCE_DIGEST
#define ROBUSTDISTILL_SOURCE_DIGEST 0ULL
#endif
extern "C" C10_EXPORT unsigned long long robustdistill_source_digest() { return ROBUSTDISTILL_SOURCE_DIGEST; }

// The GPU code the CUDA kernels were compiled to, e.g. "sm_80,sm_90,compute_90" (sm_XY: machine code
// for compute capability X.Y; compute_XY: PTX the driver compiles for X.Y and newer); "" without
// CUDA kernels. The build passes the list as tokens (-DROBUSTDISTILL_CUDA_ARCHS=sm_80,compute_90).
#ifdef ROBUSTDISTILL_CUDA_ARCHS
#define RD_STRINGIFY_ARGS(...) #__VA_ARGS__
#define RD_STRINGIFY(...) RD_STRINGIFY_ARGS(__VA_ARGS__)
extern "C" C10_EXPORT const char* robustdistill_cuda_archs() { return RD_STRINGIFY(ROBUSTDISTILL_CUDA_ARCHS); }
#else
extern "C" C10_EXPORT const char* robustdistill_cuda_archs() { return ""; }
#endif

#ifdef ROBUSTDISTILL_PY_MODULE
// Importing robustdistill._C loads this library, which runs the registrations above; the module
// itself is empty, so no pybind11 is needed.
#include <Python.h>

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
#endif
