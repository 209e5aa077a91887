"""Exports of ITDA dictionaries to the field's tools: SAELens (a folder ``sae_lens.SAE.load_from_disk`` loads),
Neuronpedia (feature JSON from the store) and delphi (its latent cache). One module per format."""
