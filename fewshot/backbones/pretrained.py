"""Pretrained backbones: torchvision's ResNet, ViT and ConvNeXt families (``tv-resnet18``, ``tv-vit_b_16``,
``tv-convnext_tiny``, ...) and, when timm is installed, any timm model (``timm`` with ``model=NAME``).

Each embeds with its classification head removed (the embedding is the penultimate features) and prepares
its own input: grayscale images repeated to 3 channels, resized to ``input_size`` when one is set, and
normalised by ``mean`` / ``std`` (ImageNet's unless the weights say otherwise). The preprocessing is part of
the module, so training, evaluation, the API and search apply it alike, and the checkpoint records it as
backbone arguments (`recorded_arguments`), with the weights themselves: a checkpoint never needs the original
weights file again.

``weights`` is a local state-dict file (``weights=PATH``), a torchvision weights name resolved from the torch
hub cache (``DEFAULT``, ``IMAGENET1K_V1``; nothing is downloaded: a missing cache entry is an error that says
how to fetch it), or ``none`` for a random initialisation.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from fewshot.backbones.base import BACKBONES, check_input_shape

#: The normalisation every torchvision ImageNet classifier was trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: `weights` values that mean a random initialisation.
NO_WEIGHTS = (None, "", "none", "None")


class InputPreprocessing(nn.Module):
    """A pretrained network's input from images in 0..1: one channel repeated to three, a resize to
    `input_size` (bilinear, antialiased) when set and different, then ``(x - mean) / std`` per channel."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], input_size: int | None) -> None:
        super().__init__()
        self.input_size = input_size
        # Not persistent: they come from the recorded arguments, and the state dict stays the network's own.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        size = self.input_size
        if size is not None and tuple(images.shape[-2:]) != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return (images - self.mean) / self.std


def check_statistics(name: str, values: Any) -> tuple[float, float, float]:
    """`values` as three floats (one per RGB channel), or a ValueError naming them."""
    try:
        numbers = tuple(float(value) for value in values)
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != 3 or (name == "std" and min(numbers) <= 0):
        wanted = "three positive numbers" if name == "std" else "three numbers"
        raise ValueError(f"{name} must be {wanted} (one per RGB channel), got {values!r}")
    return numbers  # type: ignore[return-value]


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """The state dict saved in `path` (weights-only unpickling), or a ValueError saying why it is not one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise ValueError(f"weights file {path} cannot be read as a state dict: {error}") from None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ValueError(f"weights file {path} does not hold a state dict (a dict of tensors, as saved by "
                         "torch.save(model.state_dict(), path))")
    return state


class PretrainedBackbone(nn.Module):
    """What the pretrained backbones share: input preprocessing, a headless network, weights from a file.

    Subclasses build `network` (an ``nn.Module`` giving [n, dim] features) in `build_network`, and say where
    named weights live (`named_weights_file`) and what preprocessing they expect (`default_preprocessing`).
    """

    #: Arguments that choose the starting weights, not the architecture (ignored when --init compares backbones).
    INITIALISATION_ARGUMENTS: ClassVar[tuple[str, ...]] = ("weights",)
    #: State-dict key prefixes of the classification head, dropped from a weights file.
    head_prefixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, in_channels: int = 3, weights: str | None = "DEFAULT",
                 mean: tuple[float, float, float] | None = None, std: tuple[float, float, float] | None = None,
                 input_size: int | None = None, normalize: bool = False, load_weights: bool = True) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"{self.describe()} takes 1-channel (repeated to 3) or 3-channel images, "
                             f"got in_channels={in_channels!r}")
        if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1):
            raise ValueError(f"input_size must be a positive whole number of pixels or None, got {input_size!r}")
        arguments = type(self).recorded_arguments({**self.identity(), "weights": weights, "mean": mean, "std": std,
                                                   "input_size": input_size})
        self.in_channels = in_channels
        self.normalize = normalize
        self.weights = arguments["weights"]
        self.preprocess = InputPreprocessing(arguments["mean"], arguments["std"], arguments["input_size"])
        self.network, self.embedding_dim = self.build_network(arguments["input_size"])
        arguments = {**self.identity(), **arguments}
        source = type(self).weights_source(arguments)
        if load_weights and source is not None:
            type(self).check_weights(arguments)
            self.load_weights_file(source)

    # -- what subclasses provide ------------------------------------------------------------------------------
    @classmethod
    def describe(cls) -> str:
        """The backbone's name in messages."""
        return cls.__name__

    def identity(self) -> dict[str, Any]:
        """Arguments that say which network this is, beside the shared ones (timm's ``model``)."""
        return {}

    def build_network(self, input_size: int | None) -> tuple[nn.Module, int]:
        """The randomly initialised network without its classification head, and its feature size."""
        raise NotImplementedError

    @classmethod
    def named_weights_file(cls, name: str) -> Path | None:
        """The cache file of the named weights `name`, or None when `name` names no weights of this backbone."""
        return None

    @classmethod
    def default_preprocessing(cls, weights: str | None) -> dict[str, Any]:
        """``mean``, ``std`` and ``input_size`` that the weights `weights` (a recorded value) expect."""
        return {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "input_size": None}

    @classmethod
    def canonical_weights(cls, weights: str) -> str | None:
        """The recorded form of a weights name (e.g. ``DEFAULT`` resolved), or None when it names no weights."""
        return None

    # -- shared ------------------------------------------------------------------------------------------------
    @classmethod
    def recorded_arguments(cls, arguments: dict[str, Any]) -> dict[str, Any]:
        """`arguments` completed with what a checkpoint records: the weights (a canonical name, an absolute
        path, or None) and the preprocessing (``mean``, ``std``, ``input_size``) they expect."""
        recorded = dict(arguments)
        weights = recorded.get("weights", "DEFAULT")
        if weights in NO_WEIGHTS:
            weights = None
        else:
            weights = str(weights)
            canonical = cls.canonical_weights(weights)
            if canonical is None and weights == "DEFAULT":
                raise ValueError(f"the {cls.describe()} backbone has no named weights (weights=DEFAULT): pass "
                                 "weights=PATH of a saved state dict, or weights=none")
            weights = canonical or str(Path(weights).expanduser().absolute())
        recorded["weights"] = weights
        defaults = cls.default_preprocessing(weights)
        for key in ("mean", "std"):
            value = recorded.get(key)
            recorded[key] = check_statistics(key, defaults[key] if value is None else value)
        if recorded.get("input_size") is None:
            recorded["input_size"] = defaults["input_size"]
        return recorded

    @classmethod
    def weights_source(cls, arguments: dict[str, Any]) -> Path | None:
        """The state-dict file the weights load from (a cache entry for a weights name), None for no weights."""
        weights = cls.recorded_arguments(arguments)["weights"]
        if weights is None:
            return None
        return cls.named_weights_file(weights) or Path(weights)

    @classmethod
    def check_weights(cls, arguments: dict[str, Any]) -> None:
        """A ValueError unless the weights the arguments name can be loaded without a download."""
        source = cls.weights_source(arguments)
        if source is None or source.is_file():
            return
        weights = cls.recorded_arguments(arguments)["weights"]
        if cls.named_weights_file(weights) is not None:
            raise ValueError(
                f"the {weights} weights of {cls.describe()} are not in the torch hub cache ({source}); nothing is "
                f"downloaded during a run. Fetch them once with python -c \"import torchvision; "
                f"torchvision.models.get_weight('{weights}').get_state_dict()\" (set TORCH_HOME to choose the "
                "cache), or pass --backbone-arg weights=PATH of a saved state dict, or weights=none")
        raise ValueError(f"weights file {source} does not exist (the {cls.describe()} weights=...: a state-dict file, "
                         f"a torchvision weights name such as DEFAULT, or none)")

    def load_weights_file(self, path: Path) -> None:
        """Load the network's weights from the state-dict file `path`, its classification head dropped."""
        state = {key: value for key, value in load_state_dict_file(path).items()
                 if not key.startswith(self.head_prefixes)}
        try:
            self.network.load_state_dict(state)
        except RuntimeError as error:
            raise ValueError(f"weights file {path} does not fit the {self.describe()} network: {error}") from None

    def out_dim(self, input_shape: tuple[int, int, int]) -> int:
        """Embedding size (the penultimate features) for images of shape ``(channels, height, width)``."""
        check_input_shape(input_shape, self.in_channels)
        return self.embedding_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        embeddings = self.network(self.preprocess(images)).flatten(1)
        return F.normalize(embeddings, dim=1) if self.normalize else embeddings


class TorchvisionBackbone(PretrainedBackbone):
    """A torchvision classifier (`arch`, set by each registered subclass) as a backbone."""

    arch: ClassVar[str] = ""

    @classmethod
    def describe(cls) -> str:
        return f"torchvision {cls.arch}"

    @classmethod
    def weights_enum(cls) -> Any:
        return torchvision.models.get_model_weights(cls.arch)

    @classmethod
    def canonical_weights(cls, weights: str) -> str | None:
        enum = cls.weights_enum()
        member = weights.split(".", 1)[1] if weights.startswith(f"{enum.__name__}.") else weights
        if member not in enum.__members__:
            return None
        return f"{enum.__name__}.{enum[member].name}"  # DEFAULT resolved to the weights it stands for

    @classmethod
    def named_weights_file(cls, name: str) -> Path | None:
        canonical = cls.canonical_weights(name)
        if canonical is None:
            return None
        url = cls.weights_enum()[canonical.split(".", 1)[1]].url
        return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name

    @classmethod
    def default_preprocessing(cls, weights: str | None) -> dict[str, Any]:
        preprocessing: dict[str, Any] = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "input_size": None}
        if weights is not None and cls.canonical_weights(weights) is not None:
            transform = cls.weights_enum()[weights.split(".", 1)[1]].transforms()
            preprocessing.update(mean=tuple(transform.mean), std=tuple(transform.std))
        if cls.arch.startswith("vit_"):  # position embeddings fix the input size
            preprocessing["input_size"] = 224
        return preprocessing

    def build_network(self, input_size: int | None) -> tuple[nn.Module, int]:
        options = {"image_size": input_size} if self.arch.startswith("vit_") else {}
        network = torchvision.models.get_model(self.arch, weights=None, **options)
        if isinstance(network, torchvision.models.ResNet):
            dim, network.fc = network.fc.in_features, nn.Identity()
        elif isinstance(network, torchvision.models.VisionTransformer):
            dim, network.heads = network.hidden_dim, nn.Identity()
        elif isinstance(network, torchvision.models.ConvNeXt):
            dim, network.classifier[-1] = network.classifier[-1].in_features, nn.Identity()
        else:
            raise ValueError(f"torchvision {self.arch} is not a ResNet, ViT or ConvNeXt")
        return network, int(dim)


#: The torchvision architectures registered as ``tv-ARCH``, and their head's state-dict prefix.
TORCHVISION_ARCHITECTURES = {
    **{arch: ("fc.",) for arch in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")},
    **{arch: ("heads.",) for arch in ("vit_b_16", "vit_b_32", "vit_l_16")},
    **{arch: ("classifier.2.",) for arch in ("convnext_tiny", "convnext_small", "convnext_base")},
}


def register_torchvision(arch: str, head_prefixes: tuple[str, ...]) -> type[TorchvisionBackbone]:
    """Register torchvision's `arch` as the backbone ``tv-ARCH`` (a subclass naming the architecture)."""
    name = "Torchvision" + "".join(part.capitalize() for part in arch.split("_"))
    backbone = type(name, (TorchvisionBackbone,), {"arch": arch, "head_prefixes": head_prefixes,
                                                    "__module__": __name__, "__qualname__": name,
                                                    "__doc__": f"torchvision's {arch}, headless, as a backbone."})
    return BACKBONES.register(f"tv-{arch}", backbone)


for _arch, _prefixes in TORCHVISION_ARCHITECTURES.items():
    register_torchvision(_arch, _prefixes)


def timm_available() -> bool:
    """Whether timm is installed (the ``timm`` backbone needs it)."""
    return importlib.util.find_spec("timm") is not None


@BACKBONES.register("timm")
class TimmBackbone(PretrainedBackbone):
    """Any timm model (``model=NAME``), headless (``num_classes=0``), as a backbone. Needs timm installed.

    ``weights`` is a state-dict file, ``DEFAULT`` (timm's own pretrained weights, through timm's cache) or none.
    """

    def __init__(self, model: str, in_channels: int = 3, weights: str | None = "DEFAULT",
                 mean: tuple[float, float, float] | None = None, std: tuple[float, float, float] | None = None,
                 input_size: int | None = None, normalize: bool = False, load_weights: bool = True) -> None:
        self.model_name = model
        self.pretrained = load_weights and weights == "DEFAULT"
        super().__init__(in_channels, weights, mean, std, input_size, normalize, load_weights)

    def identity(self) -> dict[str, Any]:
        return {"model": self.model_name}

    @staticmethod
    def timm() -> Any:
        if not timm_available():
            raise ValueError("the timm backbone needs timm: pip install timm")
        import timm  # optional dependency, imported only when a timm backbone is built

        return timm

    @classmethod
    def recorded_arguments(cls, arguments: dict[str, Any]) -> dict[str, Any]:
        recorded = dict(arguments)
        weights = recorded.get("weights", "DEFAULT")
        model = recorded.get("model")
        if model is None:
            raise ValueError("the timm backbone needs model=NAME (a timm model name)")
        if weights == "DEFAULT" or weights in NO_WEIGHTS:
            recorded["weights"] = "DEFAULT" if weights == "DEFAULT" else None
        else:
            recorded["weights"] = str(Path(str(weights)).expanduser().absolute())
        if recorded.get("mean") is None or recorded.get("std") is None or recorded.get("input_size") is None:
            timm = cls.timm()
            with torch.device("meta"):
                config = timm.data.resolve_model_data_config(timm.create_model(model, pretrained=False, num_classes=0))
            recorded.setdefault("mean", None)
            recorded.setdefault("std", None)
            recorded["mean"] = recorded["mean"] if recorded["mean"] is not None else config["mean"]
            recorded["std"] = recorded["std"] if recorded["std"] is not None else config["std"]
            if recorded.get("input_size") is None:
                recorded["input_size"] = int(config["input_size"][-1])
        recorded["mean"] = check_statistics("mean", recorded["mean"])
        recorded["std"] = check_statistics("std", recorded["std"])
        return recorded

    @classmethod
    def weights_source(cls, arguments: dict[str, Any]) -> Path | None:
        weights = cls.recorded_arguments(arguments)["weights"]
        return None if weights in (None, "DEFAULT") else Path(weights)  # DEFAULT: loaded by timm itself

    @classmethod
    def describe(cls) -> str:
        return "timm"

    def build_network(self, input_size: int | None) -> tuple[nn.Module, int]:
        network = self.timm().create_model(self.model_name, pretrained=self.pretrained, num_classes=0)
        return network, int(network.num_features)
