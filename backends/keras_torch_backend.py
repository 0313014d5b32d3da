"""Keras 3 on PyTorch (the ``keras-torch`` backend): the shared Keras model, trained by Keras' own torch step.

The model, its tables, rules and weights are ``keras_base``'s, shared with Keras on TensorFlow and on
JAX; this module is what torch does differently (docs/architecture.md, "Keras engines"). The step is
``train_step`` of Keras' torch trainer (``keras/src/backend/torch/trainer.py``): the model called in
training mode, ``zero_grad``, the loss, ``loss.backward()``, then ``optimizer.apply`` of each
variable's ``.grad`` under ``no_grad``. Keras runs it as plain torch (``eager``: ``jit_compile=False``,
its default on torch) or wraps it in ``torch.compile`` (``compiled``: ``jit_compile=True``), and its
predict function likewise; so does this adapter.

As the torch adapter, the training arrays live on the device and each step gathers its rows (and
augments them) eagerly before the step, as a data pipeline hands a batch to ``train_step``.
"""

from __future__ import annotations

from backends import keras_engine

keras = keras_engine.start("keras-torch")  # KERAS_BACKEND before Keras is imported anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402

from backends import REGISTRY, torch_runtime, torch_step  # noqa: E402
from backends.base import BackendInfo  # noqa: E402
from backends.keras_base import KerasBase  # noqa: E402
from bench.spec.augment import Params  # noqa: E402


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    """A copy: ``Tensor.numpy()`` of a CPU tensor shares its memory, which the optimizer updates in place."""
    tensor = tensor.detach()
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).cpu().numpy().copy()


class KerasTorchBackend(torch_runtime.TorchSteps, KerasBase):
    name = "keras-torch"
    framework = "torch+keras"
    modes = REGISTRY[name].modes

    def __init__(self) -> None:
        self.device = torch.device("cpu")

    # -- process ---------------------------------------------------------------------------------
    def _gpu_visible(self) -> bool:
        return torch.cuda.is_available()

    def _setup(self, threads: int) -> BackendInfo:
        pools = torch_runtime.configure(threads)
        self.device = torch.device("cuda" if self.on_gpu else "cpu")
        # Keras makes its torch tensors on its global device (CUDA whenever torch sees a GPU): a scope
        # entered for the worker's life puts them on the run's device, as ``with keras.device(...)`` would.
        keras.device(self.device.type).__enter__()
        return BackendInfo(framework=self.framework, versions={"torch": torch.__version__, "keras": keras.__version__},
                           device=torch_runtime.device_name(self.on_gpu), threads=pools)

    def _device_ops(self) -> torch_runtime.Ops:
        return torch_runtime.Ops(self.on_gpu)

    # -- model -----------------------------------------------------------------------------------
    def _build(self) -> None:
        if self.on_gpu:
            torch_runtime.full_fp32(self.train.precision)
        if self.mode == "compiled":
            torch._dynamo.reset()  # the previous cell's compiled code: its cache would fill and fall back to eager
        super()._build()

    def _compile_functions(self) -> None:
        self._x: torch.Tensor | None = None
        self._y: torch.Tensor | None = None
        self._caches = torch_step.CacheCount() if self.mode == "compiled" else None
        self._graphs = torch_step.GraphCount() if self.mode == "compiled" else None
        if self.mode == "compiled":  # Keras' make_train_function / make_predict_function with jit_compile=True
            self._train_fn, self._forward = torch.compile(self._train_step), torch.compile(self._forward_fn)
        else:
            self._train_fn, self._forward = self._train_step, self._forward_fn

    def _numpy(self, tensor: torch.Tensor) -> np.ndarray:
        return _numpy(tensor)

    # -- training --------------------------------------------------------------------------------
    def _place_data(self, x: np.ndarray, y: np.ndarray) -> None:
        self._x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        self._y = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(self.device)

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Keras' TorchTrainer.train_step, less its metrics."""
        z = self._model(x, training=True)
        self._model.zero_grad()  # the previous step's gradients, cleared where Keras clears them
        loss = self._loss(y, z)
        loss.backward()
        with torch.no_grad():
            self._optimizer.apply([v.value.grad for v in self._trainable], self._trainable)
        return loss.detach()

    def _forward_fn(self, x: torch.Tensor) -> torch.Tensor:
        return self._model(x, training=False)

    def _tensors(self, params: Params) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(p).to(self.device, non_blocking=True) for name, p in params.items()}

    def _step(self, batch: np.ndarray, augment: Params | None) -> torch.Tensor:
        self._feed_rate()
        index = torch.from_numpy(batch)
        if self.device.type != "cpu":
            index = index.to(self.device, non_blocking=True)
        x = self._x[index]
        if augment is not None:
            x = self._augment(x, self._tensors(augment))
        return self._train_fn(x, self._y[index])

    def _augmented(self, x: np.ndarray, params: Params) -> np.ndarray:
        with torch.no_grad():
            return _numpy(self._augment(torch.from_numpy(x).to(self.device), self._tensors(params)))

    # -- inference -------------------------------------------------------------------------------
    def logits(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return _numpy(self._forward(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)))

    def loss_and_gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, list[np.ndarray]]:
        """Eager training-mode loss and gradients; BatchNorm statistics and dropout seeds are put back."""
        state = [(v, v.value.detach().clone()) for v in self._model.non_trainable_variables]
        self._model.zero_grad()
        x_t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        loss = self._loss(torch.from_numpy(np.asarray(y, dtype=np.int64)).to(self.device), self._model(x_t, training=True))
        loss.backward()
        grads = [_numpy(v.value.grad) for v in self._trainable]
        self._model.zero_grad()
        for v, value in state:
            v.assign(value)
        return float(loss.item()), self._canonical_gradients(grads)

    # -- measurement -----------------------------------------------------------------------------

    def compiled_graphs(self) -> dict:
        """Graphs and graph breaks of Keras' compiled step, as dynamo counts them (torch_step.GraphCount):
        Keras compiles its ``train_step`` whole, so ``loss.backward()`` and the optimizer's Python are
        breaks, recorded as they are rather than worked around as the torch adapter does."""
        return self._graphs.facts() if self._graphs is not None else {}

    def forget_compiled(self, disk: bool) -> None:
        torch_runtime.forget_compiled(disk)
