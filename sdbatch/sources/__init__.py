"""Model sources: what a model spec names and where its files are (:mod:`.specs`), the one pickle policy
(:mod:`.weights`), the Hugging Face Hub cache and fetching (:mod:`.hub`), and the tiny built-in models
(:mod:`.tiny`). Never imports :mod:`sdbatch.runtime`; torch and diffusers only to build a built-in or fetch a
pipeline."""
