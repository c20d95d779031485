"""Study folders on disk: results (JSON, CSV, safetensors, figures), the HTML report, saved
modules, and study configs (one ``from_dict`` rule for every study)."""
