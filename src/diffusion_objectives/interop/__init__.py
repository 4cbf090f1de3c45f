"""Other libraries' models and vocabulary: adapters for diffusers / k-diffusion / EDM networks, translation of
their objective flags into KG23's terms, and export to diffusers pipelines."""
