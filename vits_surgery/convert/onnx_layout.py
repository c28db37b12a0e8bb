"""Give a torch-exported VITS inference graph the layout of a Piper voice graph.

torch names nodes and parameters after the modules it traced (``/text_encoder/...``,
``flow.flows.1.*``). Piper voices (and importers of them, such as
:mod:`vits_surgery.convert.onnx_graph`) use the original VITS module names (``/enc_p/...``,
``flow.flows.2.*``, ``dp.flows.0.m``, ``dec.cond``, ``emb_g``). :func:`to_piper_layout`
renames every scope, value and named initializer by the original-VITS export key map, puts
the attention layers' relative-position tables back as named 3-D tensors (constant folding
made them anonymous MatMul operands) and folds the ``Exp`` the exporter leaves on a folded
constant. The computation is unchanged: only names and constant placement differ.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from .report import ConversionError

__all__ = ["OnnxExportError", "to_piper_layout"]


class OnnxExportError(ConversionError):
    """The model cannot be exported as a Piper voice (the message says why and what to do)."""


def to_piper_layout(proto: Any, keys: Sequence[str], text_encoder: nn.Module) -> int:
    """Rename and re-arrange ``proto`` in place (see the module docstring).

    Args:
        proto: the exported ``onnx.ModelProto``.
        keys: native state-dict keys of the traced module (``text_encoder.emb.weight``, ...).
        text_encoder: the traced text encoder (its relative-position tables are matched by value).

    Returns:
        Number of named initializers renamed.
    """
    renamed = _to_vits_names(proto, keys)
    _restore_relative_tables(proto, text_encoder, _scope_map(keys))
    _fold_constant_exp(proto)
    return renamed


def _scope_map(keys: Sequence[str]) -> dict[str, str]:
    """Native module path -> original VITS module path, for every parameter's module and ancestor."""
    from .vits import EXPORT_RULES

    out: dict[str, str] = {}
    for key in keys:
        target = _rename_key(key, EXPORT_RULES)
        src, dst = key.split(".")[:-1], target.split(".")[:-1]
        if len(src) != len(dst):  # pragma: no cover - every export rule keeps the depth
            raise OnnxExportError(f"cannot name the module of {key!r} (maps to {target!r})")
        while src:
            a, b = ".".join(src), ".".join(dst)
            if out.setdefault(a, b) != b:  # pragma: no cover - the rules are consistent
                raise OnnxExportError(f"module {a!r} maps to both {out[a]!r} and {b!r}")
            src, dst = src[:-1], dst[:-1]
    return out


def _rename_key(key: str, rules: Sequence[Any]) -> str:
    for rule in rules:
        groups = rule.match(key)
        if groups is not None and rule.dst is not None:
            return rule.target(groups)
    raise OnnxExportError(f"no original-VITS name for the parameter {key!r}")


def _rename_node(name: str, scopes: Mapping[str, str]) -> str:
    """``/text_encoder/encoder/attn_layers.0/conv_q/Conv`` -> ``/enc_p/encoder/attn_layers.0/conv_q/Conv``.

    Scope components keep their own dots (``attn_layers.0``), as the exporter writes them.
    """
    if not name.startswith("/"):
        return name
    parts = name.split("/")[1:]
    scope, op = parts[:-1], parts[-1]
    for n in range(len(scope), 0, -1):
        mapped = scopes.get(".".join(scope[:n]))
        if mapped is None:
            continue
        tokens, out = mapped.split("."), []
        for part in scope[:n]:  # every export rule keeps each component's dot count
            width = part.count(".") + 1
            out.append(".".join(tokens[:width]))
            tokens = tokens[width:]
        return "/" + "/".join([*out, *scope[n:], op])
    return name


def _node_scope(name: str) -> str:
    return ".".join(name.split("/")[1:-1]) if name.startswith("/") else ""


def _to_vits_names(proto: Any, keys: Sequence[str]) -> int:
    """Rename node scopes and named initializers in place; returns the renamed initializer count."""
    from .vits import EXPORT_RULES

    scopes = _scope_map(keys)
    names = {k: _rename_key(k, EXPORT_RULES) for k in keys}
    graph = proto.graph

    def rename(value: str) -> str:  # parameters by key, scoped values (/enc_p/.../Exp_output_0) by scope
        return names.get(value) or _rename_node(value, scopes)

    renamed = sum(init.name in names for init in graph.initializer)
    for init in graph.initializer:
        init.name = rename(init.name)
    for info in graph.value_info:
        info.name = rename(info.name)
    for node in graph.node:
        node.name = _rename_node(node.name, scopes)
        node.input[:] = [rename(v) for v in node.input]
        node.output[:] = [rename(v) for v in node.output]
    return renamed


def _restore_relative_tables(proto: Any, text_encoder: nn.Module, scopes: Mapping[str, str]) -> int:
    """Put the attention layers' relative-position tables back as named 3-D initializers.

    Constant folding turns ``emb_rel_k[0].T`` and ``emb_rel_v[0]`` into anonymous 2-D MatMul
    operands, indistinguishable from a projection weight. Each is replaced by the named table
    ``[1, 2w+1, d]`` feeding ``Squeeze`` (and ``Transpose`` for keys) before its MatMul, the
    shape Piper graphs have; the values are matched exactly, so nothing else can be caught.

    Returns:
        Number of tables restored.
    """
    from onnx import numpy_helper

    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    restored = 0
    for path, module in text_encoder.named_modules(prefix="text_encoder"):
        if not hasattr(module, "emb_rel_k"):
            continue
        scope = scopes[path]
        wanted = {kind: getattr(module, kind).detach().numpy() for kind in ("emb_rel_k", "emb_rel_v")}
        for node in [n for n in g.node if n.op_type == "MatMul" and _node_scope(n.name) == scope]:
            for idx, value in enumerate(node.input):
                kind = _folded_table(numpy_helper.to_array(inits[value]), wanted) if value in inits else None
                if kind is not None:
                    _feed_table(g, node, idx, f"{scope}.{kind}", wanted.pop(kind))
                    restored += 1
        if wanted:
            raise OnnxExportError(
                f"could not find the folded relative-position tables {sorted(wanted)} of {path}"
            )
    _drop_unused_initializers(g)
    return restored


def _folded_table(array: Any, wanted: Mapping[str, Any]) -> str | None:
    """Which table (``emb_rel_k`` as ``[0].T``, ``emb_rel_v`` as ``[0]``) ``array`` is, if any."""
    import numpy as np

    for kind, table in wanted.items():
        folded = table[0].T if kind == "emb_rel_k" else table[0]
        if array.shape == folded.shape and np.array_equal(array, folded):
            return kind
    return None


def _feed_table(g: Any, node: Any, idx: int, name: str, table: Any) -> None:
    """Add initializer ``name`` = ``table`` and feed ``node.input[idx]`` from it via Squeeze (+Transpose)."""
    import numpy as np
    from onnx import helper, numpy_helper

    prefix = node.name.rsplit("/", 1)[0] + "/" + name.rsplit(".", 1)[1]
    g.initializer.append(numpy_helper.from_array(table, name))
    g.initializer.append(numpy_helper.from_array(np.array([0], dtype=np.int64), f"{prefix}/axes"))
    steps = [
        helper.make_node(
            "Squeeze", [name, f"{prefix}/axes"], [f"{prefix}/Squeeze_output_0"], name=f"{prefix}/Squeeze"
        )
    ]
    if name.endswith("emb_rel_k"):  # keys are used transposed: [2w+1, d] -> [d, 2w+1]
        out = f"{prefix}/Transpose_output_0"
        steps.append(
            helper.make_node(
                "Transpose", [steps[-1].output[0]], [out], name=f"{prefix}/Transpose", perm=[1, 0]
            )
        )
    node.input[idx] = steps[-1].output[0]
    index = list(g.node).index(node)
    for offset, step in enumerate(steps):
        g.node.insert(index + offset, step)


def _fold_constant_exp(proto: Any) -> int:
    """Replace ``Exp`` of a constant by its value (the exporter folds ``-logs`` but not its ``exp``).

    Piper graphs hold the folded ``exp(-logs)`` of the duration predictor's affine layer;
    importers read ``logs`` back from it. Returns the number of nodes folded.
    """
    import numpy as np
    from onnx import numpy_helper

    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    folded = 0
    for node in list(g.node):
        if node.op_type != "Exp" or node.input[0] not in inits:
            continue
        value = np.exp(numpy_helper.to_array(inits[node.input[0]]))
        g.initializer.append(numpy_helper.from_array(value.astype(np.float32), node.output[0]))
        g.node.remove(node)
        folded += 1
    _drop_unused_initializers(g)
    return folded


def _drop_unused_initializers(g: Any) -> None:
    used = {i for node in g.node for i in node.input} | {o.name for o in g.output}
    for init in [t for t in g.initializer if t.name not in used]:
        g.initializer.remove(init)
