# bliptk's public names, written once: ``bliptk/__init__.py`` reads this stub with lazy_loader
# and imports each name's module when the name is first used; type checkers and IDEs read it as
# the package's interface. A name here is public: add one by one import line.

from .analysis.chair import ChairResult, chair
from .analysis.evaluation import EvaluationResult, evaluate
from .analysis.feature_space import ClusterResult, Neighbour, cluster, near_duplicates, nearest, plot_feature_space, project
from .attribution.explanation import explain
from .attribution.faithfulness import Faithfulness, faithfulness, plot_faithfulness
from .attribution.folder import explain_files, load_explanations
from .attribution.registry import EXPLANATION_METHODS
from .attribution.result import Explanation, MapFileOptions, load_explanation
from .attribution.sanity import SanityCheck, plot_sanity_check, sanity_check
from .attribution.words import WordMap, plot_word_gallery, word_maps
from .captioning.folder import BatchStatus, caption_files
from .captioning.runtimes import LoadOptions, load
from .captioning.search import FeatureCache, SearchHit, search
from .core.decoding import DEFAULT_PROMPT, Caption, DecodingOptions
from .core.errors import (
    BliptkError,
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointWarning,
    CompileWarning,
    DataWarning,
    DeviceError,
    EvaluationError,
    ExampleNotFoundError,
    ExportChangedWarning,
    ExportError,
    ImageLoadError,
    InputError,
    InvalidArgumentError,
    InvalidOptionError,
    MissingDependencyError,
    NoInputsError,
    OutputError,
    OutputExistsError,
    OutputLockedError,
    PromptWarning,
    RandomWeightsWarning,
    UnknownModelError,
    VideoLoadError,
)
from .core.files import example_path, image_files, media_files
from .core.models import ModelSpec, available_models
from .core.pipeline import TimelineSegment, caption_timeline
from .core.preprocess import load_image
from .core.provenance import Weights
from .core.scoring import CaptionScore
from .core.video import DEFAULT_VIDEO_PROMPT, VideoFrames, VideoInfo, VideoOptions, is_video, plot_video_frames, video_frames, video_info
from .model.attention import (
    attention_entropy,
    attention_maps,
    overlay_attention,
    plot_attention_map,
    plot_attention_maps,
    plot_attention_overlays,
)
from .model.captioner import Captioner
from .model.exporting import export
from .model.info import NetInformation, net_information
from .model.stepper import DecodeStep, Stepper, TokenChoice, token_alternatives
from .notebook.setup import notebook_model
from .store.records import read_records
from .training.data import read_pairs
from .training.finetune import finetune
from .training.options import FinetuneOptions, FinetuneResult, LoraOptions
from .version import __version__ as __version__
