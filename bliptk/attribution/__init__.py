"""Why each caption word was chosen: the registry of explanation methods, one module each, and their faithfulness."""
