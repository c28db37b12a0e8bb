"""Recover original-VITS weights from a Piper (or original VITS) ONNX inference graph.

The torch ONNX exporter keeps a parameter's name (``dec.ups.0.weight``) only when the
parameter feeds the graph unchanged. Parameters that were computed at export time (weight
norm ``g·v/‖v‖``, ``exp(-logs)``) are constant-folded into unnamed initializers
(``onnx::Conv_8168``, ``/dp/flows.0/Exp_output_0``), and a few tables get odd names (Piper
voices call the text embedding ``sid``). This module maps every initializer to an
original-VITS state-dict key (``enc_p.*``, ``dp.*``, ``flow.flows.{0,2,4,6}.*``, ``dec.*``,
``emb_g.*``) by tracing it to the node that consumes it: node names carry the module path
(``/flow/flows.0/enc/in_layers.0/Conv``), and the op type and input position give the slot.

Strict: every initializer is either a recovered weight or an explained non-weight constant
(shape arithmetic, folded scalars such as ``sqrt(192)``); anything else raises
:class:`OnnxGraphError`. Named initializers are cross-checked against the traced slot.

Example:
    >>> state_dict, report = onnx_to_state_dict("en_US-joe-medium.onnx")
    >>> state_dict["flow.flows.0.enc.in_layers.0.weight"].shape
    torch.Size([384, 192, 5])
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .keymap import split_weight_norm

if TYPE_CHECKING:
    import onnx

__all__ = [
    "OnnxGraphError",
    "ConstantUse",
    "RecoveredTensor",
    "NonWeightConstant",
    "OnnxRecovery",
    "onnx_to_state_dict",
    "recover_onnx_weights",
    "split_weight_norm",
]

logger = logging.getLogger(__name__)

_VITS_PREFIXES = ("enc_p.", "enc_q.", "dp.", "flow.", "dec.", "emb_g.")
# Layers built with weight norm in original VITS / Piper (formats.md §2 "Weight norm").
_WEIGHT_NORM_MODULE = re.compile(
    r"^(dec\.(ups|resblocks)\.|(enc_q|flow\.flows\.\d+)\.enc\.(in_layers|res_skip_layers|cond_layer)\b)"
)
_NORM_SCOPE = re.compile(r"(^|\.)(norm_layers_[12]\.\d+|norms_[12]\.\d+|norm_[12])$")
_ATTN_SCOPE = re.compile(r"(^|\.)attn_layers\.\d+$")
_AFFINE_SCOPE = re.compile(r"^dp\.(post_)?flows\.\d+$")
# Ops a relative-position table passes through before its MatMul.
_SHAPE_OPS = {"Pad", "Slice", "Unsqueeze", "Squeeze", "Reshape", "Transpose", "Expand", "Cast"}

FORM_PLAIN = "plain"
FORM_FOLDED_WEIGHT_NORM = "weight_norm_folded"


class OnnxGraphError(ValueError):
    """The ONNX graph holds a tensor this module cannot attribute or explain."""


@dataclass(frozen=True)
class ConstantUse:
    """One place a constant is consumed: node name, op type, input position, module scope."""

    node: str
    op: str
    index: int
    scope: str
    """Dotted module path from the node name (``enc_p.encoder.attn_layers.0.conv_q``); ``""``
    for nodes without a scoped name."""

    def __str__(self) -> str:
        return f"{self.op} {self.node or '<unnamed>'} input {self.index}"


@dataclass(frozen=True)
class RecoveredTensor:
    """Provenance of one recovered state-dict entry."""

    key: str
    source: str
    """Initializer (or Constant node output) the tensor came from."""
    shape: tuple[int, ...]
    use: ConstantUse | None
    transform: str
    """What was done to the stored value (human-readable)."""
    form: str
    """``"plain"`` or ``"weight_norm_folded"`` (an effective weight ``g·v/‖v‖``)."""


@dataclass(frozen=True)
class NonWeightConstant:
    """An initializer that is graph arithmetic, not a model weight."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    explanation: str


@dataclass
class OnnxRecovery:
    """Everything :func:`recover_onnx_weights` found."""

    state_dict: dict[str, torch.Tensor]
    tensors: dict[str, RecoveredTensor]
    constants: list[NonWeightConstant]
    graph_summary: list[str]
    absent: list[str] = field(default_factory=list)

    @property
    def folded_weight_norm_keys(self) -> list[str]:
        """Keys whose tensor is an effective weight of a weight-normed layer."""
        return sorted(k for k, t in self.tensors.items() if t.form == FORM_FOLDED_WEIGHT_NORM)

    def report(self) -> list[str]:
        """One line per graph fact, recovered key, absent key family and constant."""
        lines = [f"graph: {s}" for s in self.graph_summary]
        for key in sorted(self.tensors):
            t = self.tensors[key]
            where = f" via {t.use}" if t.use else " (not consumed by any node)"
            lines.append(f"key {key} {list(t.shape)} [{t.form}] <- {t.source!r}{where}: {t.transform}")
        lines += [f"absent: {a}" for a in self.absent]
        for c in self.constants:
            lines.append(f"constant {c.name!r} {c.dtype}{list(c.shape)}: non-weight, {c.explanation}")
        return lines


def onnx_to_state_dict(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Recover an original-VITS state dict from an ONNX inference graph.

    Args:
        path: ``<voice>.onnx``.

    Returns:
        ``(state_dict, report)``: tensors under original VITS keys, and one human-readable
        line per recovered key (source initializer, transform, form), per absent key family
        and per non-weight constant.

    Raises:
        OnnxGraphError: an initializer cannot be attributed or explained, or two
            initializers map to one key.
    """
    rec = recover_onnx_weights(path)
    return rec.state_dict, rec.report()


def recover_onnx_weights(source: str | os.PathLike[str] | onnx.ModelProto) -> OnnxRecovery:
    """Structured form of :func:`onnx_to_state_dict` (accepts a loaded ``ModelProto`` too)."""
    model = _load(source)
    graph = _Graph(model)
    tensors: dict[str, RecoveredTensor] = {}
    values: dict[str, torch.Tensor] = {}
    constants: list[NonWeightConstant] = []
    unexplained: list[str] = []
    for name, array in graph.constants.items():
        found = _recover_one(graph, name, array)
        if found is None:
            explanation = _explain_constant(graph, name, array)
            if explanation is None:
                uses = "; ".join(str(u) for u in graph.uses(name)) or "no consumer"
                unexplained.append(f"{name!r} {array.dtype}{list(array.shape)} ({uses})")
            else:
                constants.append(NonWeightConstant(name, str(array.dtype), tuple(array.shape), explanation))
            continue
        info, value = found
        if info.key in tensors:
            raise OnnxGraphError(
                f"Initializers {tensors[info.key].source!r} and {name!r} both map to {info.key!r}"
            )
        tensors[info.key], values[info.key] = info, value
    if unexplained:
        raise OnnxGraphError("Unexplained initializers (neither a weight nor graph arithmetic): "
                             + ", ".join(unexplained))
    logger.info("recovered %d tensors and %d constants from ONNX graph", len(tensors), len(constants))
    return OnnxRecovery(
        state_dict=values,
        tensors=tensors,
        constants=constants,
        graph_summary=_summarize(model, graph),
        absent=_absent_families(tensors),
    )


# --------------------------------------------------------------------------- graph access


def _load(source: str | os.PathLike[str] | onnx.ModelProto) -> onnx.ModelProto:
    try:
        import onnx
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("Reading ONNX graphs needs the 'onnx' package: pip install onnx") from err
    if isinstance(source, onnx.ModelProto):
        return source
    if not os.path.isfile(source):
        raise FileNotFoundError(f"ONNX graph not found: {os.fspath(source)}")
    from .report import ConversionError

    if os.path.getsize(source) == 0:
        raise ConversionError(f"{os.fspath(source)} is empty (0 bytes): not an ONNX voice")
    try:
        # A voice is one self-contained file: external data (tensors read from paths the file
        # names) is never followed, so a voice cannot make us read other files.
        proto = onnx.load(os.fspath(source), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf raises its own error types
        raise ConversionError(
            f"{os.fspath(source)} is not a readable ONNX model (truncated or corrupt?): {type(err).__name__}: {err}"
        ) from None
    external = [t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ConversionError(
            f"{os.fspath(source)} keeps {len(external)} tensor(s) in external data files (e.g. {external[0]!r}); "
            "only self-contained ONNX voices are read (re-save it with onnx.save(model, path, "
            "save_as_external_data=False))"
        )
    return proto


def _scope(node_name: str) -> str:
    """``/enc_p/encoder/attn_layers.0/conv_q/Conv`` -> ``enc_p.encoder.attn_layers.0.conv_q``."""
    if not node_name.startswith("/"):
        return ""
    return ".".join(node_name.split("/")[1:-1])


class _Graph:
    """Constants (initializers + Constant nodes) and their consumers, through Identity."""

    def __init__(self, model: onnx.ModelProto) -> None:
        from onnx import numpy_helper

        g = model.graph
        self.constants: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        self.producer: dict[str, Any] = {}
        self.consumers: dict[str, list[tuple[Any, int]]] = {}
        for node in g.node:
            if node.op_type == "Constant" and node.output:
                self.constants[node.output[0]] = _constant_node_value(node)
            for out in node.output:
                self.producer[out] = node
            for i, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((node, i))

    def node_uses(self, name: str) -> list[tuple[Any, int]]:
        """``(node, input index)`` consumers of a value, looking through Identity nodes."""
        out: list[tuple[Any, int]] = []
        for node, i in self.consumers.get(name, []):
            out += self.node_uses(node.output[0]) if node.op_type == "Identity" else [(node, i)]
        return out

    def uses(self, name: str) -> list[ConstantUse]:
        """Consumers of ``name`` as :class:`ConstantUse` records."""
        return [_use(node, i) for node, i in self.node_uses(name)]


def _use(node: Any, index: int) -> ConstantUse:
    return ConstantUse(node.name, node.op_type, index, _scope(node.name))


def _constant_node_value(node: Any) -> np.ndarray:
    from onnx import helper, numpy_helper

    attr = node.attribute[0]
    value = helper.get_attribute_value(attr)
    if attr.name in ("value", "sparse_value"):
        return numpy_helper.to_array(value)
    return np.asarray(value)


# --------------------------------------------------------------------------- weight rules


def _recover_one(graph: _Graph, name: str, array: np.ndarray) -> tuple[RecoveredTensor, torch.Tensor] | None:
    """Map one constant to a state-dict key, or ``None`` when it is not a weight."""
    uses = graph.node_uses(name)
    named_key = name if name.startswith(_VITS_PREFIXES) and "/" not in name else None
    if not np.issubdtype(array.dtype, np.floating):
        if named_key:
            raise OnnxGraphError(f"Initializer {name!r} has a weight name but dtype {array.dtype}")
        return None
    derived = [(_use(n, i), _slot(graph, name, array, n, i)) for n, i in uses]
    keys = sorted({s[0] for _, s in derived if s is not None})
    if len(keys) > 1:
        raise OnnxGraphError(f"Initializer {name!r} feeds different weight slots: {keys}")
    if not keys:
        if named_key is None:
            return None
        use = derived[0][0] if derived else None
        key, value, transform = named_key, array, "as named (slot not traced), stored as is"
    else:
        use, (key, value, transform) = next((u, s) for u, s in derived if s is not None)
        if named_key is not None and named_key != key:
            raise OnnxGraphError(f"Initializer {name!r} is consumed as {key!r} ({use})")
    form, note = _weight_norm_form(key, named=named_key is not None)
    tensor = torch.from_numpy(np.array(value, copy=True))
    info = RecoveredTensor(key, name, tuple(tensor.shape), use, transform + note, form)
    return info, tensor


def _weight_norm_form(key: str, named: bool) -> tuple[str, str]:
    if not key.endswith(".weight") or not _WEIGHT_NORM_MODULE.match(key):
        return FORM_PLAIN, ""
    how = ("weight norm removed before export (plain parameter)" if named
           else "weight norm constant-folded by the exporter")
    return FORM_FOLDED_WEIGHT_NORM, f"; effective weight g·v/‖v‖ ({how}); weight_g/weight_v not separable"


_Slot = tuple[str, Any, str]  # (key, value, transform)


def _slot(graph: _Graph, name: str, array: np.ndarray, node: Any, idx: int) -> _Slot | None:
    """Which weight a float constant is for, judged from one of its consumers."""
    use = _use(node, idx)
    scope, op = use.scope, use.op
    if not scope:
        return None
    if op in ("Conv", "ConvTranspose") and idx in (1, 2):
        return f"{scope}.{'weight' if idx == 1 else 'bias'}", array, f"{op} input {idx}, stored as is"
    if op == "Gather" and idx == 0 and array.ndim == 2:
        return _embedding_slot(graph, name, array, node, use)
    if op in ("MatMul", "Gemm") and array.ndim == 2 and idx in (0, 1):
        return _matmul_slot(array, node, use)
    if op == "Gemm" and idx == 2:
        return f"{scope}.bias", array, "Gemm bias, stored as is"
    if op == "LayerNormalization" and idx in (1, 2):
        return f"{scope}.{'gamma' if idx == 1 else 'beta'}", array, "LayerNormalization input, stored as is"
    if array.ndim == 0 or array.size <= 1:
        return None
    if _NORM_SCOPE.search(scope) and array.ndim == 1 and op in ("Mul", "Add"):
        which = "gamma" if op == "Mul" else "beta"
        return f"{scope}.{which}", array, f"channel LayerNorm {op} operand ({which}), stored as is"
    if _ATTN_SCOPE.search(scope) and array.ndim == 3:
        return _relative_embedding_slot(graph, name, array, use)
    if _AFFINE_SCOPE.match(scope) and array.ndim == 2 and array.shape[1] == 1:
        return _affine_slot(graph, name, array, node, use)
    if op == "Add" and array.ndim == 1 and _beside_matmul(graph, node, use):
        return f"{scope}.bias", array, "bias added after a MatMul, stored as is"
    return None


def _embedding_slot(graph: _Graph, name: str, array: np.ndarray, node: Any, use: ConstantUse) -> _Slot:
    scale = None
    for consumer, _ in graph.node_uses(node.output[0]):
        other = [graph.constants.get(i) for i in consumer.input if i != node.output[0]]
        if consumer.op_type == "Mul" and other and other[0] is not None and np.size(other[0]) == 1:
            scale = float(np.asarray(other[0]).reshape(()))
    width = array.shape[1]
    if use.scope == "enc_p.emb" and (scale is None or not math.isclose(scale, math.sqrt(width), rel_tol=1e-5)):
        raise OnnxGraphError(
            f"The text embedding {name!r} is not multiplied by sqrt({width}) in the graph (found {scale}); "
            "the table may have been pre-scaled at export, so the raw embedding cannot be recovered safely"
        )
    note = f"; the graph multiplies gathered rows by {scale:.6g} = sqrt({width}) (kept out)" if scale else ""
    return f"{use.scope}.weight", array, f"Gather table (embedding rows), stored as is{note}"


def _matmul_slot(array: np.ndarray, node: Any, use: ConstantUse) -> _Slot:
    attrs = {a.name: a.i for a in node.attribute}
    if use.op == "Gemm":
        transposed = bool(attrs.get("transB", 0)) if use.index == 1 else not attrs.get("transA", 0)
    else:
        transposed = use.index == 0
    weight = array if transposed else array.T
    text = "MatMul/Gemm operand" + ("" if transposed else f" [in,out]={list(array.shape)} transposed")
    # original VITS has no nn.Linear: every matrix product with a weight is a 1x1 Conv1d
    return f"{use.scope}.weight", weight[:, :, None], text + " to a 1x1 Conv1d weight [out,in,1]"


def _beside_matmul(graph: _Graph, node: Any, use: ConstantUse) -> bool:
    other = node.input[1 - use.index] if len(node.input) == 2 else ""
    producer = graph.producer.get(other)
    return producer is not None and producer.op_type in ("MatMul", "Gemm") and _scope(producer.name) == use.scope


def _relative_embedding_slot(graph: _Graph, name: str, array: np.ndarray, use: ConstantUse) -> _Slot:
    """``emb_rel_k`` reaches its MatMul through a last-two-axes Transpose; ``emb_rel_v`` does not."""
    value, transposed = name, False
    for _ in range(12):
        consumers = graph.node_uses(value)
        if len(consumers) != 1:
            break
        node, idx = consumers[0]
        if node.op_type == "MatMul":
            which = "emb_rel_k" if transposed else "emb_rel_v"
            how = "with" if transposed else "without"
            return (f"{use.scope}.{which}", array,
                    f"relative-position table reaching MatMul {node.name} {how} a key transpose, stored as is")
        if node.op_type not in _SHAPE_OPS or idx != 0:
            break
        if node.op_type == "Transpose":
            perm = [a.ints for a in node.attribute if a.name == "perm"]
            transposed ^= bool(perm) and list(perm[0][-2:]) == [len(perm[0]) - 1, len(perm[0]) - 2]
        value = node.output[0]
    raise OnnxGraphError(f"Cannot trace attention table {name!r} {list(array.shape)} from {use} to its MatMul")


def _affine_slot(graph: _Graph, name: str, array: np.ndarray, node: Any, use: ConstantUse) -> _Slot:
    """ElementwiseAffine ``m`` / ``logs``: reverse is ``(x - m)·exp(-logs)``, forward ``m + exp(logs)·x``."""
    if use.op in ("Sub", "Add"):
        return f"{use.scope}.m", array, f"ElementwiseAffine shift ({use.op} operand), stored as is"
    if use.op in ("Exp", "Neg"):
        return f"{use.scope}.logs", array, "ElementwiseAffine log-scale fed to Exp, stored as is"
    if use.op != "Mul":
        raise OnnxGraphError(f"Unexpected use of ElementwiseAffine constant {name!r}: {use}")
    if np.any(array <= 0):
        raise OnnxGraphError(f"ElementwiseAffine scale {name!r} has non-positive values; cannot take its log")
    data_in = graph.producer.get(node.input[1 - use.index])
    if data_in is not None and data_in.op_type == "Sub" and _scope(data_in.name) == use.scope:
        return (f"{use.scope}.logs", -np.log(array),
                "constant-folded exp(-logs) after Sub(x, m) (reverse affine); recovered logs = -log(value)")
    after = [n.op_type for n, _ in graph.node_uses(node.output[0])]
    if "Add" in after:
        return (f"{use.scope}.logs", np.log(array),
                "constant-folded exp(logs) before Add(m) (forward affine); recovered logs = log(value)")
    raise OnnxGraphError(f"Cannot tell the direction of ElementwiseAffine scale {name!r} ({use})")


# --------------------------------------------------------------------------- explanations


def _explain_constant(graph: _Graph, name: str, array: np.ndarray) -> str | None:
    """Why a constant is not a weight, or ``None`` when it looks like one."""
    uses = graph.uses(name)
    ops = sorted({u.op for u in uses})
    where = f"used by {len(uses)} node(s): {', '.join(ops)}" if uses else "not consumed by any node"
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        preview = np.asarray(array).reshape(-1)[:8].tolist()
        return f"shape/index/axis arithmetic {preview}; {where}"
    if array.size != 1:
        return None
    value = float(np.asarray(array).reshape(()))
    return f"scalar {value:.7g} ({_name_scalar(value)}); {where}"


def _name_scalar(value: float) -> str:
    if value.is_integer():
        return {0.0: "zero", 1.0: "one", -10000.0: "attention mask fill"}.get(value, "integer scalar")
    if value > 1 and math.isclose(round(value * value), value * value, rel_tol=1e-5):
        return f"folded sqrt({round(value * value)})"
    known = {0.5: "half (GELU)", 1e-5: "LayerNorm epsilon", 1e-6: "spline epsilon",
             1e-3: "spline minimum bin size / derivative"}
    for k, text in known.items():
        if math.isclose(value, k, rel_tol=1e-6, abs_tol=0.0):
            return text
    return "folded arithmetic scalar"


def _summarize(model: onnx.ModelProto, graph: _Graph) -> list[str]:
    def dims(value_info: Any) -> str:
        t = value_info.type.tensor_type
        shape = [d.dim_param or str(d.dim_value) for d in t.shape.dim]
        return f"{value_info.name} elem_type={t.elem_type} [{', '.join(shape)}]"

    g = model.graph
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
    random = [n.name for n in g.node if n.op_type.startswith("RandomNormal")]
    return [
        f"producer {model.producer_name} {model.producer_version}; opset {opsets}; ir_version {model.ir_version}",
        "inputs: " + "; ".join(dims(i) for i in g.input if i.name not in graph.constants),
        "outputs: " + "; ".join(dims(o) for o in g.output),
        f"{len(g.initializer)} initializers, {len(g.node)} nodes; random nodes: {random}",
    ]


def _absent_families(tensors: dict[str, RecoveredTensor]) -> list[str]:
    keys = set(tensors)
    notes = []
    if not any(k.startswith("enc_q.") for k in keys):
        notes.append("enc_q.* (posterior encoder): training-only, not in an inference graph")
    if any(k.startswith("dp.") for k in keys) and not any(k.startswith("dp.post_") for k in keys):
        notes.append("dp.post_* (stochastic duration predictor posterior): training-only")
    conv_flows = {int(m.group(1)) for k in keys if (m := re.match(r"dp\.flows\.(\d+)\.proj\.", k))}
    if conv_flows:
        missing = [i for i in range(1, max(conv_flows) + 1, 2) if i not in conv_flows]
        if missing:
            notes.append(f"dp.flows.{missing}.* (ConvFlow): dropped by reverse inference ('useless vflow')")
    if not any(k.startswith("emb_g.") for k in keys):
        notes.append("emb_g.* (speaker embedding): none in graph (single-speaker voice)")
    if any(t.form == FORM_FOLDED_WEIGHT_NORM for t in tensors.values()):
        notes.append("*.weight_g / *.weight_v: only the folded weight exists; split_weight_norm() re-parametrizes")
    return notes
