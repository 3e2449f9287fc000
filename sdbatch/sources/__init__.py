"""Model sources: what a model spec names (:mod:`.specs`) and the tiny built-in models (:mod:`.tiny`)."""
