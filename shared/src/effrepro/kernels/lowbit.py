"""Low-bit matmul and convolution straight from Double Rounding's int8 store, with their PyTorch references.

The store holds h-bit signed codes ``q_h`` (int8) and one scale ``s_h`` (per tensor, or per output channel).
A ``b``-bit weight is ``q_b * s_h * 2^(h-b)`` with ``q_b`` the rounding right shift of ``q_h``
(:func:`effrepro.quant.functional.shift_codes`). Two products are offered, neither materialises a float
weight:

* :func:`lowbit_linear` (weight-only): float ``x`` times the b-bit codes, the scale applied to the output
  columns. Backends: ``"triton"`` (the shift happens inside the kernel, on the int8 tile just loaded),
  ``"int8pack"`` (CPU, ``torch._weight_int8pack_mm`` on the shifted int8 codes), ``"reference"``.
* :func:`int_linear` (integer inference): the input given as unsigned activation codes ``c`` (what the
  model's activation quantiser computes, ``x_q = c * s_a``), so that ``x_q @ W_b^T = s_a * s_w * (c @ q_b^T)``
  with the integer product accumulated exactly in int32. Backends: ``"int_mm"`` (``torch._int_mm``, CPU and
  CUDA), ``"triton"`` (int8 ``tl.dot`` into int32), ``"reference"`` (the float product the fake-quant model
  computes). 8-bit activation codes (0..255) do not fit int8: they are offset by -128 and the exact
  correction ``128 * sum_k q_b[n, k]`` is added back in int32.

Convolutions go through im2col (:func:`im2col`; 1x1 convolutions by a strided view, others by
``F.unfold``); zero padding is exact in code space because code 0 is value 0 for inputs without a zero
point. Packed storage (:func:`pack_codes`) keeps two 4-bit or four 2-bit codes per byte.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from effrepro.errors import UsageError
from effrepro.kernels._dispatch import check_backend, kernel_for, notice, triton_runs_on
from effrepro.quant.functional import check_tie_mode, dequantize_codes, positive, shift_codes, signed_range

LINEAR_BACKENDS = ("auto", "triton", "int8pack", "reference")
INT_BACKENDS = ("auto", "int_mm", "triton", "reference")
TIE_CODES = {"floor": 0, "half_up": 1, "half_even": 2}
PACK_PER_BYTE = {4: 2, 2: 4}


# ---- codes and scales -----------------------------------------------------------------------------------
def lowbit_codes(codes: Tensor, bits: int, high_bits: int = 8, tie_mode: str = "half_up") -> Tensor:
    """The b-bit int8 codes derived from the stored h-bit codes (the integer double-rounding shift)."""
    if bits > high_bits:
        raise UsageError(f"cannot derive {bits}-bit codes from a {high_bits}-bit store")
    return shift_codes(codes, high_bits - bits, bits, tie_mode)


def output_scale(scale: Tensor, n: int, delta: int) -> Tensor:
    """``s_h * 2^D`` per output column (FP32, length ``n``), from a per-tensor or per-channel ``s_h``."""
    s = positive(scale.detach().to(torch.float32)).reshape(-1) * float(1 << delta)
    if s.numel() not in (1, n):
        raise UsageError(f"weight scale has {s.numel()} entries; expected 1 or one per output channel ({n})")
    return s.expand(n).contiguous()


def pack_codes(codes: Tensor, bits: int) -> Tensor:
    """Signed ``bits``-bit codes (int8, last dim K) -> uint8 with 8/bits codes per byte (K padded with zeros).

    8- and 6-bit codes are returned as they are (int8): 6-bit packing is not byte aligned and is not offered.
    """
    if bits not in PACK_PER_BYTE:
        return codes.to(torch.int8).contiguous()
    per = PACK_PER_BYTE[bits]
    lo, hi = signed_range(bits)
    if codes.numel() and (int(codes.min()) < lo or int(codes.max()) > hi):
        raise UsageError(f"codes outside the signed {bits}-bit range [{lo}, {hi}] cannot be packed")
    k = codes.shape[-1]
    pad = (-k) % per
    u = (codes.to(torch.int32) & ((1 << bits) - 1))  # two's complement in the low bits
    if pad:
        u = F.pad(u, (0, pad))
    u = u.reshape(*codes.shape[:-1], -1, per)
    shifts = torch.arange(per, dtype=torch.int32, device=codes.device) * bits
    return (u << shifts).sum(-1).to(torch.uint8)


def unpack_codes(packed: Tensor, bits: int, k: int) -> Tensor:
    """Inverse of :func:`pack_codes`: int8 codes with last dim ``k``. Each code is moved to the top of the byte
    by a left shift and brought back by an arithmetic right shift, which sign-extends it (int8 ops only)."""
    if bits not in PACK_PER_BYTE:
        return packed
    signed = packed.view(torch.int8)
    parts = [(signed << (8 - bits * (i + 1))) >> (8 - bits) for i in range(PACK_PER_BYTE[bits])]
    return torch.stack(parts, -1).reshape(*packed.shape[:-1], -1)[..., :k]


# ---- references -----------------------------------------------------------------------------------------
def lowbit_linear_reference(x: Tensor, codes: Tensor, scale: Tensor, bits: int, high_bits: int = 8,
                            tie_mode: str = "half_up", bias: Tensor | None = None) -> Tensor:
    """``x @ W_b^T + bias`` with ``W_b`` de-quantised to float, as the de-quantised evaluation path does it."""
    delta = high_bits - bits
    q = lowbit_codes(codes, bits, high_bits, tie_mode)
    s = output_scale(scale, q.shape[0], 0).reshape(-1, *([1] * (q.dim() - 1)))
    w = dequantize_codes(q, s, delta, x.dtype)
    return F.linear(x, w, bias)


def int_linear_reference(act_codes: Tensor, act_scale: Tensor | float, weight_codes: Tensor, weight_scale: Tensor,
                         bias: Tensor | None = None) -> Tensor:
    """The fake-quant model's float product ``(c * s_a) @ (q_b * s_w)^T + bias`` (``s_w`` already ``s_h 2^D``,
    per output column)."""
    x = act_codes.to(torch.float32) * act_scale
    w = weight_codes.to(torch.float32) * weight_scale.reshape(-1, 1)
    return F.linear(x, w, bias)


# ---- Triton kernel (GPU; CPU tensors through the interpreter) -----------------------------------------------
def _blocks(device: torch.device) -> tuple[int, int, int]:
    return (64, 64, 32) if device.type == "cuda" else (16, 16, 16)


def triton_lowbit_mm(a: Tensor, codes: Tensor, delta: int, bits: int, tie_mode: str,
                     col_scale: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
    """Launch the kernel on 2-D ``a`` (float, or int8 activation codes) and 2-D int8 ``codes`` (N, K).

    Float ``a``: FP32 ``(a @ shift(codes)^T) * col_scale + bias``. Int8 ``a``: the exact int32 product.
    """
    int_a = a.dtype == torch.int8
    m, k = a.shape
    n = codes.shape[0]
    if codes.shape[1] != k:
        raise UsageError(f"inner sizes differ: input {tuple(a.shape)}, codes {tuple(codes.shape)}")
    if not int_a:
        a = a.to(torch.float32)
    y = torch.empty(m, n, device=a.device, dtype=torch.int32 if int_a else torch.float32)
    if m == 0 or n == 0:
        return y
    scale = col_scale if col_scale is not None else torch.ones(n, device=a.device)
    bias_t = bias.to(torch.float32).contiguous() if bias is not None else scale
    lo, hi = signed_range(bits)
    bm, bn, bk = _blocks(a.device)
    grid = (math.ceil(m / bm), math.ceil(n / bn))
    from effrepro.kernels._triton import lowbit_mm_kernel

    kernel = kernel_for(lowbit_mm_kernel, a.device)
    kernel[grid](a, codes, scale.to(torch.float32).contiguous(), bias_t, y, m, n, k, a.stride(0), a.stride(1),
                 codes.stride(0), codes.stride(1), y.stride(0), y.stride(1), DELTA=delta,
                 TIE=TIE_CODES[check_tie_mode(tie_mode)], LO=lo, HI=hi, INT_A=int_a, HAS_BIAS=bias is not None,
                 BM=bm, BN=bn, BK=bk)
    return y


# ---- weight-only product ------------------------------------------------------------------------------------
def _pick_linear_backend(x: Tensor, backend: str) -> str:
    check_backend(backend, LINEAR_BACKENDS)
    if backend == "auto":
        if x.device.type == "cuda":
            backend = "triton"
        else:
            from effrepro.kernels._dispatch import interpret_requested

            backend = "triton" if interpret_requested() else "int8pack"
    if backend == "triton" and not triton_runs_on(x.device):
        notice(f"Triton is not available for {x.device.type} tensors; low-bit matmul uses the PyTorch reference")
        return "reference"
    if backend == "int8pack" and (x.device.type != "cpu" or not hasattr(torch.ops.aten, "_weight_int8pack_mm")):
        notice(f"torch._weight_int8pack_mm is not available for {x.device.type}; low-bit matmul uses the reference")
        return "reference"
    return backend


def lowbit_linear(x: Tensor, codes: Tensor, scale: Tensor, bits: int, high_bits: int = 8,
                  tie_mode: str = "half_up", bias: Tensor | None = None, backend: str = "auto") -> Tensor:
    """``x @ W_b^T + bias`` for ``W_b`` derived from the h-bit int8 ``codes`` (N, K), without a float weight.

    ``backend``: ``"auto"`` (Triton on CUDA, ``int8pack`` on CPU, Triton's interpreter on CPU when
    ``TRITON_INTERPRET=1``), ``"triton"``, ``"int8pack"``, ``"reference"``. Output FP32.
    """
    if codes.dtype != torch.int8 or codes.dim() != 2:
        raise UsageError(f"codes must be a 2-D int8 tensor, got {codes.dtype} {tuple(codes.shape)}")
    backend = _pick_linear_backend(x, backend)
    if backend == "reference":
        return lowbit_linear_reference(x.float(), codes, scale, bits, high_bits, tie_mode, bias)
    delta = high_bits - bits
    lead = x.shape[:-1]
    a = x.reshape(-1, x.shape[-1])
    col = output_scale(scale, codes.shape[0], delta).to(x.device)
    if backend == "triton":
        y = triton_lowbit_mm(a, codes, delta, bits, tie_mode, col, bias)
    else:
        q = lowbit_codes(codes, bits, high_bits, tie_mode)
        y = torch._weight_int8pack_mm(a.to(torch.float32).contiguous(), q.contiguous(), col)
        if bias is not None:
            y = y + bias
    return y.reshape(*lead, codes.shape[0])


# ---- integer inference ------------------------------------------------------------------------------------
def quantize_activation(x: Tensor, scale: Tensor | float, bits: int) -> Tensor:
    """Unsigned activation codes ``round(clamp(x / s, 0, 2^b - 1))`` as exact small floats: the same ops, so the
    same codes, as the model's activation fake-quantiser (inputs without a zero point)."""
    s = positive(scale) if isinstance(scale, Tensor) else max(float(scale), 1e-8)
    return torch.round((x / s).clamp(0, (1 << bits) - 1))


def _pick_int_backend(device: torch.device, backend: str, m: int, k: int, n: int) -> str:
    check_backend(backend, INT_BACKENDS)
    if backend == "auto":
        backend = "int_mm"
        if device.type == "cuda" and not (m > 16 and k % 8 == 0 and n % 8 == 0):
            backend = "triton"  # cuBLASLt's int8 GEMM shape rules
    if backend == "triton" and not triton_runs_on(device):
        notice(f"Triton is not available for {device.type} tensors; integer matmul uses the PyTorch reference")
        return "reference"
    if backend == "int_mm" and not hasattr(torch, "_int_mm"):
        notice("torch._int_mm is missing in this torch build; integer matmul uses the PyTorch reference")
        return "reference"
    return backend


def _to_int8(codes: Tensor, offset: int) -> Tensor:
    """Activation codes as int8 (``codes - offset``: 8-bit codes 0..255 are moved to -128..127)."""
    if codes.dtype == torch.int8 and not offset:
        return codes
    return (codes.to(torch.int32) - offset).to(torch.int8) if offset else codes.to(torch.int8)


def _int_matmul(a8: Tensor, offset: int, weight_codes: Tensor, weight_scale: Tensor, act_scale: Tensor | float,
                bias: Tensor | None, backend: str) -> Tensor:
    """``((a8 + offset) @ q^T) * (s_a * s_w) + bias`` with the integer product exact in int32."""
    if backend == "int_mm":
        acc = torch._int_mm(a8, weight_codes.t())
    else:
        acc = triton_lowbit_mm(a8, weight_codes, 0, 8, "half_up")
    if offset:
        acc = acc + offset * weight_codes.to(torch.int32).sum(1)
    y = acc.to(torch.float32) * (act_scale * weight_scale)
    return y + bias if bias is not None else y


def int_linear(act_codes: Tensor, act_bits: int, act_scale: Tensor | float, weight_codes: Tensor,
               weight_scale: Tensor, bias: Tensor | None = None, backend: str = "auto") -> Tensor:
    """``(c * s_a) @ (q_b * s_w)^T + bias`` with the integer product ``c @ q_b^T`` exact in int32.

    ``act_codes``: unsigned ``act_bits``-bit codes (any dtype holding integers; last dim K), ``weight_codes``:
    the b-bit int8 codes (N, K) (already shifted), ``weight_scale``: ``s_h * 2^D`` per output column (N,).
    """
    lead = act_codes.shape[:-1]
    a = act_codes.reshape(-1, act_codes.shape[-1])
    n = weight_codes.shape[0]
    backend = _pick_int_backend(a.device, backend, a.shape[0], a.shape[1], n)
    if backend == "reference":
        return int_linear_reference(act_codes, act_scale, weight_codes, weight_scale, bias)
    offset = 128 if act_bits == 8 else 0
    y = _int_matmul(_to_int8(a, offset), offset, weight_codes, weight_scale, act_scale, bias, backend)
    return y.reshape(*lead, n)


# ---- convolution by im2col ----------------------------------------------------------------------------------
def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def im2col(x: Tensor, kernel_size: tuple[int, int], stride: int | tuple[int, int] = 1,
           padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1,
           pad_value: float = 0) -> tuple[Tensor, int, int]:
    """``(N*Ho*Wo, kh*kw*C)`` patches of ``x`` (N, C, H, W), channels innermost (the order of
    :func:`conv_weight_matrix`). Built from the NHWC view of ``x`` by one strided copy (free of a transpose
    when ``x`` is channels-last, which the convolutions here return)."""
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    n, c, h, w = x.shape
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    nhwc = x.permute(0, 2, 3, 1)
    if (kh, kw) == (1, 1) and (ph, pw) == (0, 0):
        return nhwc[:, ::sh, ::sw, :].reshape(n * ho * wo, c), ho, wo
    padded = F.pad(nhwc, (0, 0, pw, pw, ph, ph), value=pad_value).contiguous() if ph or pw else nhwc.contiguous()
    s = padded.stride()
    patches = padded.as_strided((n, ho, wo, kh, kw, c), (s[0], s[1] * sh, s[2] * sw, s[1] * dh, s[2] * dw, s[3]))
    return patches.reshape(n * ho * wo, kh * kw * c), ho, wo


def conv_weight_matrix(weight: Tensor) -> Tensor:
    """(Cout, C, kh, kw) -> (Cout, kh*kw*C), the column order of :func:`im2col`."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def _cols_to_image(y: Tensor, n: int, ho: int, wo: int) -> Tensor:
    """(N*Ho*Wo, Cout) -> (N, Cout, Ho, Wo) as a channels-last view (no copy)."""
    return y.reshape(n, ho, wo, y.shape[-1]).permute(0, 3, 1, 2)


def lowbit_conv2d(x: Tensor, codes: Tensor, scale: Tensor, bits: int, high_bits: int = 8, tie_mode: str = "half_up",
                  bias: Tensor | None = None, stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                  dilation: int | tuple[int, int] = 1, backend: str = "auto") -> Tensor:
    """Weight-only low-bit ``conv2d`` (groups 1, zero padding) by im2col and :func:`lowbit_linear`."""
    cols, ho, wo = im2col(x, codes.shape[2:], stride, padding, dilation)
    y = lowbit_linear(cols, conv_weight_matrix(codes), scale, bits, high_bits, tie_mode, bias, backend)
    return _cols_to_image(y, x.shape[0], ho, wo)


def int_conv2d(act_codes: Tensor, act_bits: int, act_scale: Tensor | float, weight_codes: Tensor,
               weight_scale: Tensor, bias: Tensor | None = None, stride: int | tuple[int, int] = 1,
               padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1,
               backend: str = "auto", kernel_size: tuple[int, int] | None = None) -> Tensor:
    """Integer ``conv2d`` of unsigned activation codes (N, C, H, W) with b-bit weight codes: (Cout, C, kh, kw),
    or already as :func:`conv_weight_matrix` (Cout, kh*kw*C) with ``kernel_size`` given. The codes are
    converted to int8 before im2col, so the patch matrix is built in int8."""
    if weight_codes.dim() == 4:
        kernel_size = tuple(weight_codes.shape[2:])
        matrix = conv_weight_matrix(weight_codes)
    elif kernel_size is None:
        raise UsageError("a 2-D weight matrix needs kernel_size")
    else:
        matrix = weight_codes
    kh, kw = _pair(kernel_size)
    n, c, h, w_in = act_codes.shape
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    rows = n * ((h + 2 * ph - dh * (kh - 1) - 1) // sh + 1) * ((w_in + 2 * pw - dw * (kw - 1) - 1) // sw + 1)
    backend = _pick_int_backend(act_codes.device, backend, rows, matrix.shape[1], matrix.shape[0])
    if backend == "reference":
        w = matrix.to(torch.float32).reshape(-1, kh, kw, c).permute(0, 3, 1, 2) * weight_scale.reshape(-1, 1, 1, 1)
        return F.conv2d(act_codes.to(torch.float32) * act_scale, w, bias, stride, padding, dilation)
    offset = 128 if act_bits == 8 else 0
    cols, ho, wo = im2col(_to_int8(act_codes, offset), (kh, kw), stride, padding, dilation, pad_value=-offset)
    y = _int_matmul(cols, offset, matrix, weight_scale, act_scale, bias, backend)
    return _cols_to_image(y, n, ho, wo)
