"""Loading a registered expert together with the exact advisor versions it was trained with."""
from __future__ import annotations

from dataclasses import dataclass

from adex.errors import RegistryError


DEFAULT_EXPERT = "builtin::expert/vacancy"


#: The best shipped expert whose advisors need no optional package: used when the default
#: cannot load because an optional package (CHGNet) is missing.
CORE_EXPERT = "builtin::expert/vacancy-core"


@dataclass
class LoadedExpert:
    entry: object
    model: object
    advisors: list  # (entry, model)


def load_expert(ref: str, registry, lazy_advisors: bool = False) -> LoadedExpert:
    """The expert ``ref`` and the exact advisor versions it was trained with.

    Each advisor is resolved by the exact reference recorded in the expert and its
    weights' sha256 must equal the recorded one (so a shadowing user model or an edited
    file cannot silently change the expert's inputs). With ``lazy_advisors`` the advisor
    models are :class:`adex.checkpoint.LazyModel`: built only if an embedding is not in
    the cache (``predict --cache``).
    """
    from adex.checkpoint import ARCHITECTURE, WEIGHTS, lazy_model, load_model

    entry = registry.resolve(ref, kind="expert")
    if entry.kind != "expert":
        raise RegistryError(f"{ref} is a {entry.kind}, not an expert")
    model = load_model(entry)
    advisors = []
    for slot in model.advisors:
        # a built-in expert reads built-in advisors: a user model of the same name cannot shadow them
        slot_ref = slot.ref if (entry.store != "builtin" or "::" in slot.ref) else f"builtin::{slot.ref}"
        adv_entry = registry.resolve(slot_ref, kind="advisor")
        for what, recorded, filename in (("weights", slot.weights_sha256, WEIGHTS),
                                         ("model.json", slot.model_sha256, ARCHITECTURE)):
            sha = adv_entry.files.get(filename, {}).get("sha256")
            if recorded and sha != recorded:
                raise RegistryError(f"{entry.ref} needs advisor {slot.ref} with {what} sha256 {recorded[:12]}..., "
                                    f"but {adv_entry.ref} has {str(sha)[:12]}...")
        advisors.append((adv_entry, lazy_model(adv_entry) if lazy_advisors else load_model(adv_entry)))
    return LoadedExpert(entry, model, advisors)


def load_default_expert(registry, lazy_advisors: bool = False) -> tuple[LoadedExpert, str | None]:
    """The shipped default expert, or :data:`CORE_EXPERT` when the default needs an
    optional package that is not installed. Returns (expert, note for the user or None)."""
    from adex.errors import MissingExtraError

    try:
        return load_expert(DEFAULT_EXPERT, registry, lazy_advisors), None
    except MissingExtraError as exc:
        try:
            core = load_expert(CORE_EXPERT, registry, lazy_advisors)
        except RegistryError:
            raise exc from None
        return core, f"{exc}; using {core.entry.ref} instead (the best shipped expert without optional packages)"
