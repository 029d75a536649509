"""jaxops: PyTorch's custom-operator system (``torch.library``), rebuilt for JAX.

>>> import jax, jax.numpy as jnp, jaxops
>>> @jaxops.custom_op("readme::scale_add", mutates_args=())
... def scale_add(x: jax.Array, y: jax.Array, alpha: float = 1.0) -> jax.Array:
...     return x + alpha * y
>>> scale_add.schema
'(Tensor x, Tensor y, float alpha=1.0) -> Tensor'
"""

import jaxops.legacy as legacy
from jaxops import ffi, types
from jaxops.autograd import (
    autograd_fallback_mode,
    get_autograd_fallback_mode,
    set_autograd_fallback_mode,
)
from jaxops.fake import get_ctx
from jaxops.inference import infer_function_schema, infer_schema
from jaxops.library import (
    Library,
    define,
    get_kernel,
    impl,
    register_autograd,
    register_fake,
    register_kernel,
    register_vmap,
)
from jaxops.monitoring import compile_counter
from jaxops.op import CustomOp, custom_op
from jaxops.opcheck import OpCheckError, is_inside_opcheck, opcheck
from jaxops.plan import Plan, plan
from jaxops.profiles import (
    MissingOpProfile,
    OpProfile,
    TensorMetadata,
    load_op_profiles,
    record_op_profiles,
    save_op_profiles,
    unsafe_generate_fake_kernels,
)
from jaxops.registry import OpOverloadPacket, ops
from jaxops.repro import generate_repro
from jaxops.samples import register_sample_inputs, sample_inputs
from jaxops.schema import FunctionSchema, parse_schema
from jaxops.tags import Tag
from jaxops.version import __version__ as __version__

__all__ = [
    "CustomOp",
    "FunctionSchema",
    "Library",
    "MissingOpProfile",
    "OpCheckError",
    "OpProfile",
    "OpOverloadPacket",
    "Plan",
    "Tag",
    "TensorMetadata",
    "autograd_fallback_mode",
    "compile_counter",
    "custom_op",
    "define",
    "get_kernel",
    "ffi",
    "get_autograd_fallback_mode",
    "get_ctx",
    "impl",
    "infer_function_schema",
    "load_op_profiles",
    "infer_schema",
    "opcheck",
    "ops",
    "parse_schema",
    "plan",
    "record_op_profiles",
    "register_autograd",
    "register_sample_inputs",
    "register_fake",
    "register_kernel",
    "register_vmap",
    "save_op_profiles",
    "sample_inputs",
    "set_autograd_fallback_mode",
    "types",
    "unsafe_generate_fake_kernels",
    "legacy",
    "generate_repro",
    "is_inside_opcheck",
]
