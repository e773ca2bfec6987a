"""Thin Flower adapters: the ClientApp, the ServerApp, the recording strategy wrapper, DP glue and node keys."""
