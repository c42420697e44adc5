"""Every learned annotator's loader, with its weight file missing, refuses with the shared message
(annotators/weights.py find_weights) that names the file, the folders looked in and where the file
is published: lllyasviel/Annotators for most, a repository of its own or a folder in one for
others. The addresses are written out here, not taken from the modules, so a wrong one is caught.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from annotators.anyline import load_anyline
from annotators.anime_face_segment import ANIME_FACE_REPO, ANIME_FACE_WEIGHTS, load_anime_face_segment
from annotators.dsine import DSINE_REPO, DSINE_WEIGHTS, load_dsine
from annotators.depth_anything import (MODEL_FILES, V1_MODEL_FILES, WEIGHTS_REPOS, load_depth_anything,
                                       load_depth_anything_v1)
from annotators.hed import HED_WEIGHTS, load_hed
from annotators.leres import LERES_WEIGHTS, load_leres
from annotators.lineart import LINEART_WEIGHTS, load_lineart
from annotators.lineart_anime import LINEART_ANIME_WEIGHTS, load_lineart_anime
from annotators.manga_line import load_manga_line
from annotators.midas import MIDAS_WEIGHTS, load_midas
from annotators.mlsd import MLSD_WEIGHTS, load_mlsd
from annotators.normalbae import load_normalbae
from annotators.openpose import load_openpose
from annotators.openpose.networks import BODY_WEIGHTS
from annotators.pidinet import PIDINET_WEIGHTS, load_pidinet
from annotators.teed import MTEED_WEIGHTS, TEED_WEIGHTS, load_teed
from annotators.uniformer import load_uniformer
from annotators.weights import MissingWeightsError
from annotators.zoe import load_zoe
from tests.annotators.random_learned import random_network, save_published

ANNOTATORS_URL = "https://huggingface.co/lllyasviel/Annotators"
TEED_URL = "https://huggingface.co/bdsqlsz/qinglong_controlnet-lllite/tree/main/Annotators"
MTEED_URL = "https://huggingface.co/TheMistoAI/MistoLine/tree/main/Anyline"


def two_absent_folders(root: Path) -> list[Path]:
    return [root / "annotators", root / "more"]


def one_absent_folder(root: Path) -> list[Path]:
    return [root / "annotators"]


def empty_folder_then_body_weights(root: Path) -> list[Path]:
    """The body file in the second folder, nothing in the first. load_openpose finds every file
    before it reads any, so the body file only has to be there."""
    empty = root / "empty"
    empty.mkdir()
    (root / BODY_WEIGHTS).touch()
    return [empty, root]


def anime_face_unet_only(root: Path) -> list[Path]:
    """UNet.pth but not ISNet's file (the background removal's)."""
    folder = root / "annotators"
    folder.mkdir()
    (folder / "UNet.pth").touch()
    return [folder]


def mteed_weights_only(root: Path) -> list[Path]:
    """A usable MTEED.pth (load_anyline reads it before it looks for the line-art file)."""
    folder = root / "annotators"
    save_published(random_network("teed", "load_teed", seed=0), folder, MTEED_WEIGHTS)
    return [folder]


@dataclass(frozen=True)
class Case:
    load: Callable[[list[str]], object]  # the loader, given the folders
    file_name: str
    published_at: str
    folders: Callable[[Path], list[Path]] = two_absent_folders  # under tmp_path; may fill some
    # (module constant, the value it must have): names the modules export beside the message
    constants: tuple[tuple[str, str], ...] = ()


CASES = {
    "leres": Case(load_leres, "res101.pth", ANNOTATORS_URL, constants=((LERES_WEIGHTS, "res101.pth"),)),
    "hed": Case(load_hed, HED_WEIGHTS, ANNOTATORS_URL),
    "pidinet": Case(load_pidinet, PIDINET_WEIGHTS, ANNOTATORS_URL),
    "lineart": Case(load_lineart, LINEART_WEIGHTS, ANNOTATORS_URL),
    "lineart_anime": Case(load_lineart_anime, LINEART_ANIME_WEIGHTS, ANNOTATORS_URL),
    "mlsd": Case(load_mlsd, MLSD_WEIGHTS, ANNOTATORS_URL),
    "normalbae": Case(load_normalbae, "scannet.pt", ANNOTATORS_URL),
    "dsine": Case(load_dsine, "dsine.pt", "https://huggingface.co/hr16/Diffusion-Edge",
                  constants=((DSINE_WEIGHTS, "dsine.pt"), (DSINE_REPO, "hr16/Diffusion-Edge"))),
    "teed": Case(load_teed, TEED_WEIGHTS, TEED_URL),
    "anime_face_segment": Case(load_anime_face_segment, "UNet.pth", TEED_URL,
                               constants=((ANIME_FACE_WEIGHTS, "UNet.pth"),
                                          (ANIME_FACE_REPO, "bdsqlsz/qinglong_controlnet-lllite/Annotators"))),
    "anime_face_segment_background": Case(lambda folders: load_anime_face_segment(folders, remove_background=True),
                                          "isnetis.ckpt", "https://huggingface.co/skytnt/anime-seg",
                                          folders=anime_face_unet_only),
    "mteed": Case(lambda folders: load_teed(folders, mteed=True), MTEED_WEIGHTS, MTEED_URL),
    "midas": Case(load_midas, "dpt_hybrid-midas-501f0c75.pt", ANNOTATORS_URL,
                  constants=((MIDAS_WEIGHTS, "dpt_hybrid-midas-501f0c75.pt"),)),
    "uniformer": Case(load_uniformer, "upernet_global_small.pth", ANNOTATORS_URL),
    "zoe": Case(load_zoe, "ZoeD_M12_N.pt", ANNOTATORS_URL),
    **{f"depth_anything_{size}": Case(
        lambda folders, size=size: load_depth_anything(folders, size=size), file_name,
        f"https://huggingface.co/{repo}", constants=((MODEL_FILES[size], file_name), (WEIGHTS_REPOS[file_name], repo)))
       for size, file_name, repo in [
           ("small", "depth_anything_v2_vits.pth", "depth-anything/Depth-Anything-V2-Small"),
           ("base", "depth_anything_v2_vitb.pth", "depth-anything/Depth-Anything-V2-Base"),
           ("large", "depth_anything_v2_vitl.pth", "depth-anything/Depth-Anything-V2-Large")]},
    # V1's are in a folder of the authors' Space, not a model repository
    **{f"depth_anything_v1_{size}": Case(
        lambda folders, size=size: load_depth_anything_v1(folders, size=size), file_name,
        "https://huggingface.co/spaces/LiheYoung/Depth-Anything/tree/main/checkpoints",
        constants=((V1_MODEL_FILES[size], file_name),))
       for size, file_name in [("small", "depth_anything_vits14.pth"), ("base", "depth_anything_vitb14.pth"),
                               ("large", "depth_anything_vitl14.pth")]},
    "manga_line": Case(load_manga_line, "erika.pth", ANNOTATORS_URL),
    "openpose_hands": Case(lambda folders: load_openpose(folders, hands=True), "hand_pose_model.pth",
                           ANNOTATORS_URL, folders=empty_folder_then_body_weights),
    "anyline_mteed": Case(load_anyline, "MTEED.pth", MTEED_URL, folders=one_absent_folder),
    "anyline_manga_line": Case(lambda folders: load_anyline(folders, merge_with_lineart="manga_line"),
                               "erika.pth", ANNOTATORS_URL, folders=mteed_weights_only),
}


@pytest.mark.parametrize("name", list(CASES))
def test_missing_weights_name_the_file_the_folders_and_where_it_is_published(tmp_path, name):
    case = CASES[name]
    folders = case.folders(tmp_path)
    existed = [folder.exists() for folder in folders]
    first, looked_in = str(folders[0]), ", ".join(map(str, folders))
    with pytest.raises(MissingWeightsError) as error:
        case.load([str(folder) for folder in folders])
    assert str(error.value) == (
        f"annotator weights '{case.file_name}' not found. Download {case.file_name} from {case.published_at} "
        f"and put it in {first} (looked in: {looked_in}). Nothing is downloaded automatically.")
    assert [folder.exists() for folder in folders] == existed  # looking never creates folders
    assert [value for value, _ in case.constants] == [expected for _, expected in case.constants]
