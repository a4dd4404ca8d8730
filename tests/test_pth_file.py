"""``decoder.pth`` read without torch: the same arrays as ``torch.load``, and nothing else run."""
import pickle
import zipfile

import numpy as np
import pytest
import torch

from soprano.errors import ModelFileError
from soprano.model.pth_file import read_state_dict


def test_every_tensor_as_torch_loads_it(tmp_path):
    sd = {"contiguous": torch.randn(3, 4), "transposed": torch.arange(12.0).reshape(3, 4).T,
          "half_column": torch.randn(4, 6).half()[:, 2], "bf16": torch.randn(5).bfloat16(),
          "offset": torch.randn(10)[3:7], "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3)}
    torch.save(sd, tmp_path / "d.pth")
    got = read_state_dict(tmp_path / "d.pth")
    assert list(got) == list(sd)
    for name, t in sd.items():
        want = t.view(torch.uint16).numpy() if t.dtype == torch.bfloat16 else t.numpy()
        assert got[name].shape == want.shape and got[name].dtype == want.dtype, name
        assert np.array_equal(got[name], want) and got[name].flags.c_contiguous, name


def test_the_published_decoder(tiny_ckpt):
    got = read_state_dict(f"{tiny_ckpt}/decoder.pth")
    want = torch.load(f"{tiny_ckpt}/decoder.pth", weights_only=True)
    assert set(got) == set(want)
    assert all(np.array_equal(got[k], want[k].numpy()) for k in want)


class Evil:
    def __reduce__(self):
        return (print, ("ran the file's code",))


def test_code_in_the_pickle_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": Evil()}))
    with pytest.raises(ModelFileError, match="'builtins.print' is not part of a plain state dict"):
        read_state_dict(path)
    assert "ran" not in capsys.readouterr().out


@pytest.mark.parametrize("content, why", [(b"not a zip", "not a readable decoder state dict"),
                                          (None, "file is missing")])
def test_bad_files_name_the_file(tmp_path, content, why):
    path = tmp_path / "decoder.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelFileError, match=why) as e:
        read_state_dict(path)
    assert "decoder.pth" in str(e.value)
