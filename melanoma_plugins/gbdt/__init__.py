"""Gradient-boosted trees on the metadata and measurement columns: LightGBM (``lgbm``), XGBoost and CatBoost
(``xgb``, ``catboost``), sharing one parameter model and one feature preparation."""

from __future__ import annotations
