"""custom_vjp: ``torch.autograd.Function`` for JAX (see docs/design.md for the module map)."""

from custom_vjp.anomaly import detect_anomaly as detect_anomaly
from custom_vjp.anomaly import is_anomaly_enabled as is_anomaly_enabled
from custom_vjp.anomaly import set_detect_anomaly as set_detect_anomaly
from custom_vjp.callback import host as host
from custom_vjp.checkpoint import checkpoint as checkpoint
from custom_vjp.function import Function as Function
from custom_vjp.function import FunctionCtx as FunctionCtx
from custom_vjp.function import once_differentiable as once_differentiable
from custom_vjp.gradcheck import GradcheckError as GradcheckError
from custom_vjp.gradcheck import gradcheck as gradcheck
from custom_vjp.gradcheck import gradgradcheck as gradgradcheck
from custom_vjp.hooks import grad_hook as grad_hook
from custom_vjp.saved_tensors import saved_tensors_hooks as saved_tensors_hooks
