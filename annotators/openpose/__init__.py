"""OpenPose annotator (body, hands, face): networks, keypoint decoding, drawing, JSON.

Entry point: `openpose(image, load_openpose(folders, ...))`. Files: networks.py (the three CNNs
and their loader), inference.py (running one on an image), body.py (PAF decoding),
hand_face.py (hand / face boxes and points), drawing.py, keypoints_json.py, detector.py.
"""

from .detector import detect_poses, openpose
from .drawing import draw_poses
from .keypoints_json import poses_to_json
from .networks import (BodyPoseNetwork, FaceNetwork, HandPoseNetwork, OpenPoseNetworks,
                       load_openpose)
from .pose import Pose

__all__ = ["BodyPoseNetwork", "FaceNetwork", "HandPoseNetwork", "OpenPoseNetworks", "Pose",
           "detect_poses", "draw_poses", "load_openpose", "openpose", "poses_to_json"]
