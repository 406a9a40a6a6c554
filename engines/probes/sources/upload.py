"""Your own text (.txt or .md, read by engines.probes.haystack.read_upload), cut into sentences."""
from __future__ import annotations

from engines.config.errors import HaystackError
from engines.config.kinds import register
from engines.probes.haystack import Source, cycle_from, sentences_of
from engines.probes.sources import HaystackSource


@register
class Upload(HaystackSource):
    name = "upload"
    description = "your own .txt or .md file (up to 5 MB), cut into sentences"

    def source(self, upload_text=None):
        if not upload_text:
            raise HaystackError("The 'upload' haystack needs a .txt or .md file: upload one first.")
        text = upload_text
        sentences = tuple(sentences_of(" ".join(text.split()))) or tuple(
            line for line in text.splitlines() if line.strip())
        if not sentences:
            raise HaystackError("The uploaded text has no sentences to build a haystack from; upload prose.")
        return Source(self.name, lambda rng: cycle_from(sentences, rng))
