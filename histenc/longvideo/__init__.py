"""A long video, section by section: ``storyboard`` -> ``orders`` -> ``loop`` (with ``resume``) -> ``decode``."""
