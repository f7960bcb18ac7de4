"""Which implementation of a layer runs, and why.

`LSTM`, `GRU` and `SimpleRNN` each run one of three paths, all with the same parameters:

* "vendor": PyTorch's own kernel (`torch.lstm` / `torch.gru` / `torch.rnn_tanh|relu`,
  what `torch.nn.LSTM` calls; oneDNN on CPU). Only for the configurations it knows:
  default activations, no mask, no recurrent dropout.
* "fused": longshort's fused loop with a hand-written backward (`fused_*.py`): masks and
  recurrent dropout included, default activations.
* "loop": the readable cell stepped by `RNN.run`: anything, including your activations.

`implementation="auto"` takes the first of vendor, fused, loop that can run the call;
naming one asks for it and raises if it cannot run the configuration.
`layer.dispatch(masked=...)` says which path a call would take and why each other path
was refused; `layer.last_dispatch` is the decision of the last call.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from torch import Tensor

from longshort.rnn import RNN, State

IMPLEMENTATIONS = ("auto", "vendor", "fused", "loop")
PREFERENCE = ("vendor", "fused", "loop")  # the order "auto" tries


class Dispatch(NamedTuple):
    implementation: str  # the path that runs
    refused: dict[str, str]  # each path that cannot run this call, and why


class Dispatcher(RNN):
    """An `RNN` whose cell also has a vendor and a fused path (see the module docstring).

    A subclass says why a path cannot run (`_vendor_refusal`, `_fused_refusal`: None when it
    can) and runs it (`_run_vendor`, `_run_fused`), each returning what `RNN.run` returns.
    """

    implementation: str
    last_dispatch: Optional[Dispatch] = None

    def _set_implementation(self, implementation: str) -> None:
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        self.implementation = implementation
        if implementation != "auto":
            self.dispatch(masked=False)  # a configuration the path can never run fails now, not at the first call

    def dispatch(self, masked: bool = False) -> Dispatch:
        """The path a call (with a mask if `masked`) takes, and why each other path was refused."""
        refused = {
            path: reason
            for path, reason in (("vendor", self._vendor_refusal(masked)), ("fused", self._fused_refusal(masked)))
            if reason is not None
        }
        if self.implementation == "auto":
            return Dispatch(next(path for path in PREFERENCE if path not in refused), refused)
        if self.implementation in refused:
            raise ValueError(
                f"{type(self).__name__}(implementation={self.implementation!r}) cannot run this configuration: "
                f"{refused[self.implementation]}. Use implementation='auto' to fall back."
            )
        return Dispatch(self.implementation, refused)

    def run(self, x: Tensor, state: State, mask: Optional[Tensor]) -> tuple[Optional[Tensor], Tensor, State]:
        self.last_dispatch = self.dispatch(masked=mask is not None)
        path = self.last_dispatch.implementation
        if path == "vendor":
            return self._run_vendor(x, state)
        if path == "fused":
            return self._run_fused(x, state, mask)
        return super().run(x, state, mask)

    # -- what subclasses provide ------------------------------------------------------------
    def _vendor_refusal(self, masked: bool) -> Optional[str]:
        raise NotImplementedError

    def _fused_refusal(self, masked: bool) -> Optional[str]:
        raise NotImplementedError

    def _run_vendor(self, x: Tensor, state: State):
        raise NotImplementedError

    def _run_fused(self, x: Tensor, state: State, mask: Optional[Tensor]):
        raise NotImplementedError
