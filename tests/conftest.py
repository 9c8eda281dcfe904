import warnings

import pytest
import torch

torch.set_num_threads(2)
warnings.filterwarnings("ignore", category=UserWarning, module="timm")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
