"""Text: normalisation, and the BPE and WordPiece subword tokenizers with their file format."""
