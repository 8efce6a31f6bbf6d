"""A registry of interchangeable parts chosen by one key of the config (``sensing.backend``,
``camera.type``): each part registers its name, its config model and its factory, and the config
union, the tag's error texts and the factory dispatch are all built from what was registered.

The registries themselves live beside their parts: :mod:`daemon.sensing.registry` (sensing
backends, listed in :mod:`daemon.sensing.backends`) and :mod:`daemon.vision.registry` (camera
types, listed in :mod:`daemon.vision.cameras`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field


class StrictModel(BaseModel):
    """Base of every config model: an unknown key is an error, never a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=False)


M = TypeVar("M", bound=StrictModel)
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry(Generic[F]):
    name: str                      # the value of the tag key (``backend: hx711``)
    model: type[StrictModel]       # its config model; its tag field is ``Literal[name]``
    factory: F                     # builds the part from the config (imports hardware lazily)


class Registry(Generic[F]):
    """Parts of one kind. Error texts list them alphabetically, whatever the import order."""

    def __init__(self, section: str, tag: str, noun: str):
        self.section = section     # config key holding the part: "sensing"
        self.tag = tag             # key choosing it: "backend"
        self.noun = noun           # what an unknown value is called: "backend", "camera type"
        self._entries: dict[str, Entry[F]] = {}

    def register(self, name: str, model: type[M], factory: F) -> type[M]:
        """Add a part; returns ``model`` so a module can write ``register(...)`` as its last line."""
        if name in self._entries:
            raise ValueError(f"{self.section}.{self.tag} {name!r} is registered twice")
        field = model.model_fields.get(self.tag)
        if field is None or getattr(field.annotation, "__args__", None) != (name,):
            raise TypeError(f"{model.__name__} needs a field `{self.tag}: Literal[{name!r}]`")
        self._entries[name] = Entry(name, model, factory)
        return model

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._entries))

    def entry(self, name: str) -> Entry[F]:
        return self._entries[name]

    def factory_for(self, cfg: StrictModel) -> F:
        return self._entries[getattr(cfg, self.tag)].factory

    def model_for(self, name: Any) -> type[StrictModel] | None:
        e = self._entries.get(name) if isinstance(name, str) else None
        return e.model if e else None

    def union(self) -> Any:
        """The pydantic type of the section: a union of every model, switched on the tag."""
        models = tuple(e.model for e in self._entries.values())
        if not models:
            raise RuntimeError(f"no {self.section} {self.noun} registered")
        # a Union over a runtime tuple: `|` cannot spell it
        inner = Union[models] if len(models) > 1 else models[0]  # noqa: UP007
        return Annotated[inner, Field(discriminator=self.tag)]

    # ------------------------------------------------------------ error texts (one line each)

    def choices(self) -> str:
        """``hx711, iio, replay or sim``"""
        names = sorted(self._entries)
        return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"

    def unknown(self, value: Any) -> str:
        return f"unknown {self.noun} {value!r}; expected {self.choices()}"

    def missing(self) -> str:
        return f"required key {self.tag!r} is missing ({self.choices()})"
