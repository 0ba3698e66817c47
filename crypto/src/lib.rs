//! weft-crypto (in progress)
