"""Study folders on disk: results (JSON, CSV, safetensors, figures; written whole under a lock,
sealed by a manifest), the HTML report, saved modules, and study configs (one ``from_dict`` rule
for every study)."""

from cgc_lens.io.configs import (
    CONFIG_DIR,
    config_from_dict,
    config_to_dict,
    field_docs,
    read_config,
    resolve_config_path,
    unwrap_optional,
)
from cgc_lens.io.folder_lock import folder_lock
from cgc_lens.io.hf_export import save_model
from cgc_lens.io.manifest import MANIFEST_FILE, LegacyFolderWarning
from cgc_lens.io.report import REPORT_FILENAME, Report, write_report
from cgc_lens.io.results import ResultsFolder, read_results, to_jsonable, versions, write_results
from cgc_lens.io.serialization import CONFIG_FILE, WEIGHTS_FILE, load_folder, save_folder
from cgc_lens.io.staging import check_out_dir

__all__ = [
    "CONFIG_DIR", "CONFIG_FILE", "MANIFEST_FILE", "REPORT_FILENAME", "WEIGHTS_FILE",
    "LegacyFolderWarning", "Report", "ResultsFolder", "check_out_dir", "config_from_dict",
    "config_to_dict", "field_docs", "folder_lock", "load_folder", "read_config",
    "read_results", "resolve_config_path", "save_folder", "save_model", "to_jsonable",
    "unwrap_optional",
    "versions", "write_report", "write_results",
]
