"""Building model config dataclasses from a HF ``config.json`` dict (no tvm import)."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T", bound="ConfigBase")


@dataclasses.dataclass
class ConfigBase:
    """Base of the model configs: known fields are set, the rest is kept in ``kwargs``."""

    @classmethod
    def from_dict(cls: type[T], source: dict[str, Any]) -> T:
        # HF's own "dtype"/"torch_dtype" is the checkpoint's storage type; ours comes from the
        # quantization mode, so it is never read from config.json.
        field_names = {f.name for f in dataclasses.fields(cls)} - {"kwargs", "dtype"}
        known = {k: v for k, v in source.items() if k in field_names}
        extra = {k: v for k, v in source.items() if k not in field_names}
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in known
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ValueError(f"config.json lacks required field(s): {', '.join(missing)}")
        return cls(**known, kwargs=extra)  # type: ignore[call-arg]

    def asdict(self) -> dict[str, Any]:
        """The config as a flat JSON-able dict (``kwargs`` dropped)."""
        out = dataclasses.asdict(self)
        out.pop("kwargs", None)
        return out
