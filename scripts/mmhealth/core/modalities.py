"""The four modalities and the facts about them that several stages share."""

MODALITIES = ("image", "dna", "text", "ehr")
# Modalities whose rows are token ids; image rows hold pixels.
TOKEN_MODALITIES = ("text", "dna", "ehr")
# A label file's record_id names a DICOM series or a FASTA record, pseudonymised with this kind as ingestion
# does; these modalities get record-level bags, the others contribute the subject's rows.
RECORD_KIND = {"image": "series", "dna": "fasta"}
RECORD_MODALITIES = tuple(RECORD_KIND)
