"""A small research repository as a team keeps it: a package of modules that import each other,
and a notebook's `transforms.Compose` preprocessing, written into a folder for packaging tests."""

from __future__ import annotations

from pathlib import Path

FILES = {
    "research_lib/__init__.py": "",
    "research_lib/blocks.py": '''
from torch import nn


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU())
''',
    "research_lib/heads.py": '''
from torch import nn


class Head(nn.Module):
    def __init__(self, width: int, classes: int):
        super().__init__()
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        return self.fc(x.mean((2, 3)))
''',
    "research_lib/net.py": '''
from torch import nn

from research_lib.heads import Head

from .blocks import conv_block


class ResearchNet(nn.Module):
    def __init__(self, width: int = 8, classes: int = 5):
        super().__init__()
        self.features = nn.Sequential(conv_block(3, width), conv_block(width, width * 2))
        self.head = Head(width * 2, classes)

    def forward(self, x):
        return self.head(self.features(x))
''',
    "research_lib/transforms.py": '''
from torchvision import transforms

MEAN, STD = (0.5, 0.45, 0.4), (0.25, 0.24, 0.26)


def eval_transform() -> transforms.Compose:
    return transforms.Compose([transforms.Resize(72), transforms.CenterCrop(64), transforms.ToTensor(),
                               transforms.Normalize(MEAN, STD)])
''',
}
# The notebook's preprocessing as it is: a Compose object returning tensors, from the package.
PREPROCESS = '''
from research_lib.transforms import eval_transform

preprocess = eval_transform()
'''
MODEL_CLASS = "research_lib.net:ResearchNet"


def write_repo(folder: Path, files: dict[str, str] | None = None) -> Path:
    """The research repository's files (FILES, then `files` over them) under `folder`."""
    for rel, text in {**FILES, **(files or {})}.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    return folder
