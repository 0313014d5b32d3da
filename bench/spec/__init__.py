"""The spec floor, what a model and a run *are*: model and train spec, vocabulary, cells, shapes,
cost, canonical weights, framework rules, losses, augmentation parameters and data.

The only part of ``bench`` an adapter in ``backends/`` may import (docs/architecture.md, "Floors").
"""
