"""Read SignatureDefs from a SavedModel and describe their inputs in error messages.

The local server validates requests against the same SignatureDefs that TF Serving reads
from `saved_model.pb`, and GetModelMetadata returns them, so a client gets one description
of a model's inputs from either server.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence

from tensorflow.core.framework import tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

SERVE_TAG = "serve"
SAVED_MODEL_FILE = "saved_model.pb"

# tf.saved_model.save adds this entry to every SignatureDefMap. It is an initializer, not a
# signature a client can call.
_INIT_OP_SIGNATURE = "__saved_model_init_op"


def read_signature_defs(
    saved_model_dir: str | os.PathLike,
) -> dict[str, meta_graph_pb2.SignatureDef]:
    """Read the callable signatures of the `serve` MetaGraph of a SavedModel.

    Args:
        saved_model_dir: the SavedModel folder (a version folder such as `<base>/ranking/3`).

    Returns:
        Signature name to SignatureDef, without the SavedModel init op.

    Raises:
        FileNotFoundError: the folder has no saved_model.pb.
        ValueError: no MetaGraph is tagged `serve`.
    """
    path = pathlib.Path(saved_model_dir) / SAVED_MODEL_FILE
    saved_model = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    for meta_graph in saved_model.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return {
                name: signature
                for name, signature in meta_graph.signature_def.items()
                if name != _INIT_OP_SIGNATURE
            }
    tag_sets = [list(meta_graph.meta_info_def.tags) for meta_graph in saved_model.meta_graphs]
    raise ValueError(f"{path} has no MetaGraph tagged '{SERVE_TAG}'; its tag sets are {tag_sets}")


def dtype_name(dtype: int) -> str:
    """Return the TensorFlow DataType name of an enum value, e.g. 7 -> 'DT_STRING'."""
    try:
        return types_pb2.DataType.Name(dtype)
    except ValueError:
        return f"DT_UNKNOWN({dtype})"


def shape_dims(shape: tensor_shape_pb2.TensorShapeProto) -> list[int] | None:
    """Return the dimensions of a shape proto (-1 for unknown), or None for unknown rank."""
    if shape.unknown_rank:
        return None
    return [dim.size for dim in shape.dim]


def describe_shape(dims: Sequence[int] | None) -> str:
    """Return a shape as TF Serving prints it: `[-1, 3]`, `[]` for a scalar."""
    if dims is None:
        return "<unknown rank>"
    return "[" + ", ".join(str(size) for size in dims) + "]"


def shape_accepts(expected: Sequence[int] | None, received: Sequence[int]) -> bool:
    """Return True when a tensor of shape `received` fits the signature shape `expected`."""
    if expected is None:
        return True
    if len(expected) != len(received):
        return False
    return all(want in (-1, got) for want, got in zip(expected, received, strict=True))


def describe_tensor_infos(tensor_infos: Mapping[str, meta_graph_pb2.TensorInfo]) -> str:
    """Describe signature inputs or outputs as `item_id: DT_STRING [-1], user_id: ...`."""
    parts = []
    for name in sorted(tensor_infos):
        info = tensor_infos[name]
        parts.append(
            f"{name}: {dtype_name(info.dtype)} {describe_shape(shape_dims(info.tensor_shape))}"
        )
    return ", ".join(parts)
