"""A device's deployment budget: flash for the int8 model, training RAM, latency per inference.

The numbers come from a device profile (``conf/device/profile/<name>.yaml``: ``flash_kb``,
``train_ram_kb``, ``latency_ms``, ``int8_macs_per_s``), each overridable in the search
config's ``budget`` section. A trial's measurement is within the budget when every
ratio ``measured / budget`` is <= 1; :meth:`DeviceBudget.constraints` returns
``ratio - 1`` per limit (optuna's convention: <= 0 is feasible), and
:meth:`DeviceBudget.violations` says in words which limits a model breaks.

Latency is an estimate for the device, ``MACs / int8_macs_per_s`` (the way MCU model
searches such as MCUNet's TinyNAS budget latency without the device in the loop);
ONNX Runtime's latency on this machine is recorded beside it but is not the device's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from fedge.conf.cli import CONF_DIR
from fedge.search.knobs import SearchConfigError
from fedge.simulations.devices.profile import DeviceProfile

KB = 1000  # flash and RAM budgets are in kB (1,000 bytes), as datasheets state them
LIMITS = ("flash_kb", "train_ram_kb", "latency_ms")


@dataclass(frozen=True)
class Measured:
    """What a trial's final model needs on the device."""

    int8_bytes: int  # size of the int8 ONNX file (what flash holds)
    train_bytes: int  # peak training memory: weights + gradients + optimiser state + saved activations
    macs: int  # multiply-accumulates of one example's forward pass

    def latency_ms(self, macs_per_s: float) -> float:
        """Estimated ms per inference on a core doing ``macs_per_s`` int8 MACs per second."""
        return 1000.0 * self.macs / macs_per_s


@dataclass(frozen=True)
class DeviceBudget:
    """The limits a deployable model must stay within (all > 0)."""

    profile: str
    flash_kb: float
    train_ram_kb: float
    latency_ms: float
    int8_macs_per_s: float

    def __post_init__(self) -> None:
        for key in (*LIMITS, "int8_macs_per_s"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise SearchConfigError(
                    f"budget.{key}: must be > 0, got {value!r} (device profile {self.profile!r}; set it in the profile "
                    f"or in the search config's budget section)")

    def needs(self, m: Measured) -> dict[str, float]:
        """The model's need in each limit's unit."""
        return {"flash_kb": m.int8_bytes / KB, "train_ram_kb": m.train_bytes / KB,
                "latency_ms": m.latency_ms(self.int8_macs_per_s)}

    def constraints(self, m: Measured) -> list[float]:
        """``need / limit - 1`` per limit, in :data:`LIMITS` order: <= 0 fits (optuna's ``Trial.set_constraint``)."""
        needs = self.needs(m)
        return [needs[key] / getattr(self, key) - 1.0 for key in LIMITS]

    def violations(self, m: Measured) -> list[str]:
        """Each limit the model breaks, in words (empty: it fits)."""
        needs = self.needs(m)
        return [f"{key} {needs[key]:.4g} > {getattr(self, key):.4g}" for key in LIMITS if needs[key] > getattr(self, key)]


def load_profile(name: str) -> DeviceProfile:
    """The device profile ``conf/device/profile/<name>.yaml``, checked."""
    path = CONF_DIR / "device" / "profile" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise SearchConfigError(f"profile: no device profile {name!r} (conf/device/profile/: {', '.join(known)})")
    fields = OmegaConf.to_container(OmegaConf.load(path))
    assert isinstance(fields, dict)
    try:
        return DeviceProfile(**{str(k): v for k, v in fields.items()})
    except (TypeError, ValueError) as exc:
        raise SearchConfigError(f"profile: {Path(path).name}: {exc}") from None


def device_budget(profile: str, overrides: Mapping[str, float | None]) -> DeviceBudget:
    """The budget of ``profile`` with the search config's non-null ``budget.*`` values over it."""
    unknown = set(overrides) - {*LIMITS, "int8_macs_per_s"}
    if unknown:
        raise SearchConfigError(f"budget.{sorted(unknown)[0]}: unknown; budget keys: {', '.join((*LIMITS, 'int8_macs_per_s'))}")
    p = load_profile(profile)
    values = {key: getattr(p, key) for key in (*LIMITS, "int8_macs_per_s")}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return DeviceBudget(profile, **values)
