"""Course profiles: which image, how many GPUs, how much CPU and RAM.

Profiles are plain dicts in config (``c.GPUSpawner.profiles``); they are
validated all at once when the hub loads its config, and every error names the
profile and the field, so a typo shows at start-up rather than at 9:00 on the
first day of class.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .gpus.allocation import GPURequest
from .traits import format_bytes, is_mig_profile, parse_bytes

_SLUG = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,62})$")


class ProfileError(ValueError):
    """A profile in config that cannot be used."""


@dataclass(frozen=True)
class Profile:
    """One choice a student may make."""

    slug: str
    display_name: str
    image: str
    gpus: int = 0
    gpu_kind: str = "gpu"  # "gpu" whole GPUs, "mig" MIG instances, "any" either
    gpu_model: str = ""  # a part of the GPU's name, e.g. "A100"
    gpu_min_memory: int = 0  # bytes
    mig_profile: str = ""  # e.g. "1g.10gb"
    shared_gpu: bool = False  # a slot on a GPU shared with other users, instead of whole units
    mem_limit: int | None = None  # bytes; None: the spawner's hub-wide mem_limit
    cpu_limit: float | None = None  # CPUs; None: the spawner's hub-wide cpu_limit
    shm_size: int | None = None  # bytes of /dev/shm; None: the spawner's shm_size
    description: str = ""

    @property
    def gpu_request(self) -> GPURequest:
        return GPURequest(
            count=self.gpus,
            shared=self.shared_gpu,
            kind=self.gpu_kind,
            model=self.gpu_model,
            min_memory=self.gpu_min_memory,
            mig_profile=self.mig_profile,
        )

    def summary(self) -> str:
        """One line for people: '1 whole GPU, 4 CPUs, 16 GiB RAM'."""
        request = self.gpu_request
        parts = [request.describe() if request.slots else "no GPU"]
        if self.cpu_limit is not None:
            parts.append(f"{self.cpu_limit:g} CPU{'s' if self.cpu_limit != 1 else ''}")
        if self.mem_limit is not None:
            parts.append(f"{format_bytes(self.mem_limit)} RAM")
        return ", ".join(parts)


_REQUIRED = ("slug", "display_name", "image")
_GPU_FIELDS = {"gpus", "gpu_kind", "gpu_model", "gpu_min_memory", "mig_profile", "shared_gpu"}
_KNOWN = {"slug", "display_name", "image", "mem_limit", "cpu_limit", "shm_size", "description"} | _GPU_FIELDS


def _field_error(position: int, slug: object, field: str, problem: str) -> ProfileError:
    name = f"profile {slug!r}" if isinstance(slug, str) and slug else f"profile #{position + 1}"
    return ProfileError(f"{name}: field {field!r}: {problem}")


def parse_profile(position: int, entry: object) -> Profile:
    """Validate one profile dict (``position`` counts from 0, for messages)."""
    if not isinstance(entry, dict):
        raise ProfileError(f"profile #{position + 1}: must be a dict, got {type(entry).__name__}")
    slug = entry.get("slug")

    def error(field: str, problem: str) -> ProfileError:
        return _field_error(position, slug, field, problem)

    for field in _REQUIRED:
        if field not in entry:
            raise error(field, "is required")
    unknown = sorted(set(entry) - _KNOWN)
    if unknown:
        raise error(unknown[0], f"is not a profile field; known fields: {', '.join(sorted(_KNOWN))}")

    if not isinstance(slug, str) or not _SLUG.match(slug):
        raise error("slug", f"must be 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit; got {slug!r}")
    for field in ("display_name", "image"):
        if not isinstance(entry[field], str) or not entry[field].strip():
            raise error(field, f"must be a non-empty string, got {entry[field]!r}")
    description = entry.get("description", "")
    if not isinstance(description, str):
        raise error("description", f"must be a string, got {description!r}")

    gpus = entry.get("gpus", 0)
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 0:
        raise error("gpus", f"must be a whole number of GPUs >= 0, got {gpus!r}")
    shared_gpu = entry.get("shared_gpu", False)
    if not isinstance(shared_gpu, bool):
        raise error("shared_gpu", f"must be true or false, got {shared_gpu!r}")
    if shared_gpu and gpus > 1:
        raise error("shared_gpu", f"is one slot on one shared GPU; set 'gpus' to 0 or 1, not {gpus}")
    mig_profile = entry.get("mig_profile", "")
    if not isinstance(mig_profile, str) or (mig_profile and not is_mig_profile(mig_profile)):
        raise error("mig_profile", f"must be a MIG profile such as '1g.10gb', got {mig_profile!r}")
    gpu_kind = entry.get("gpu_kind", "mig" if mig_profile else "gpu")
    if gpu_kind not in ("gpu", "mig", "any"):
        raise error("gpu_kind", f"must be 'gpu' (whole GPUs), 'mig' (MIG instances) or 'any', got {gpu_kind!r}")
    if mig_profile and gpu_kind == "gpu":
        raise error("gpu_kind", "is 'gpu' (whole GPUs), but 'mig_profile' asks for MIG instances")
    gpu_model = entry.get("gpu_model", "")
    if not isinstance(gpu_model, str):
        raise error("gpu_model", f"must be a part of a GPU name such as 'A100', got {gpu_model!r}")
    asks_gpu = gpus > 0 or shared_gpu
    for field in sorted(_GPU_FIELDS - {"gpus", "shared_gpu", "gpu_kind"}):
        if entry.get(field) and not asks_gpu:
            raise error(field, "constrains GPUs, but this profile asks for none (set 'gpus' or 'shared_gpu')")

    sizes = {}
    for field in ("mem_limit", "shm_size", "gpu_min_memory"):
        value = entry.get(field)
        if value is None:
            sizes[field] = None
            continue
        try:
            sizes[field] = parse_bytes(value)
        except ValueError as e:
            raise error(field, str(e)) from None
        if sizes[field] == 0:
            raise error(field, "must be more than 0")

    cpu_limit = entry.get("cpu_limit")
    if cpu_limit is not None:
        if isinstance(cpu_limit, bool) or not isinstance(cpu_limit, (int, float)) or cpu_limit <= 0:
            raise error("cpu_limit", f"must be a number of CPUs > 0, such as 2 or 0.5; got {cpu_limit!r}")
        cpu_limit = float(cpu_limit)

    return Profile(
        slug=slug,
        display_name=entry["display_name"].strip(),
        image=entry["image"].strip(),
        gpus=1 if shared_gpu else gpus,
        gpu_kind=gpu_kind,
        gpu_model=gpu_model.strip(),
        gpu_min_memory=sizes["gpu_min_memory"] or 0,
        mig_profile=mig_profile,
        shared_gpu=shared_gpu,
        mem_limit=sizes["mem_limit"],
        cpu_limit=cpu_limit,
        shm_size=sizes["shm_size"],
        description=description.strip(),
    )


def parse_profiles(entries: object) -> tuple[Profile, ...]:
    """Validate the whole ``c.GPUSpawner.profiles`` list; slugs must be unique."""
    if not isinstance(entries, (list, tuple)):
        raise ProfileError(f"profiles must be a list of dicts, got {type(entries).__name__}")
    profiles = tuple(parse_profile(i, entry) for i, entry in enumerate(entries))
    seen: set[str] = set()
    for profile in profiles:
        if profile.slug in seen:
            raise ProfileError(f"profile {profile.slug!r}: field 'slug': two profiles share this slug")
        seen.add(profile.slug)
    return profiles


def choose_profile(profiles: tuple[Profile, ...], choice: object) -> Profile:
    """The profile a user chose (``user_options["profile"]``), or the first when none.

    Raises ``ProfileError`` naming the choices when the slug is unknown.
    """
    if not profiles:
        raise ProfileError("no profiles are configured (c.GPUSpawner.profiles is empty)")
    if choice is None or choice == "":
        return profiles[0]
    if isinstance(choice, list) and len(choice) == 1:  # a form field, passed through
        choice = choice[0]
    for profile in profiles:
        if profile.slug == choice:
            return profile
    choices = ", ".join(p.slug for p in profiles)
    raise ProfileError(f"unknown profile {choice!r}; choose one of: {choices}")
