"""Keras image plugins, one concern per file:

* ``device.py``   — the backend, the distribution strategy (TPU, mirrored GPUs/CPUs), mixed precision
* ``inputs.py``   — training, validation and prediction batches (tf.data over TFRecords, numpy from Parquet),
  the fusion model's metadata features, diagnosis-class labels
* ``augment.py``  — the seeded augmentation layer (runs inside the model, on the device)
* ``nets.py``     — architectures: EfficientNet backbones, the seed's CNNs and the small CNN, fusion, the two-view
  model, heads
* ``lite.py``     — EfficientNet-Lite0–4 and the mapping of the packaged ImageNet weights onto it
* ``pretrained.py`` — the packaged weight files, their pinned sha256, the restricted legacy-PyTorch reader
  (numpy only)
* ``losses.py``   — focal loss and cross-entropy (binary, or over the diagnosis classes)
* ``gradcam.py``  — Grad-CAM heat maps (one image, or each view of the two-view model)
* ``schedule.py`` — the warm-up + cosine/exponential learning-rate schedule, and ``RunAdam`` (the schedule and
  the transfer recipe's stage switch in optimizer variables: one compiled graph per run)
* ``training.py`` — the parameters every Keras plugin shares and the training loop (fit, early stopping,
  prediction with test-time augmentation, save/load)
* ``plugins.py``  — the three plugins: ``effnet`` (the seed's V2), ``cnn`` (V1), ``fusion`` (V3)
* ``twoview.py``  — ``twoview``: a lesion's dermoscopic and clinical image (ISIC 2025 / MILK10k), lesion samples,
  a missing view masked, one prediction per lesion

Only ``augment``, ``nets``, ``lite``, ``losses`` and ``schedule`` import Keras when imported (lazily, through the
others), so listing plugins never starts TensorFlow. They import no project data code but the
stdlib-only start-up log filter, so they also run where only JAX is installed (``KERAS_BACKEND=jax``).
"""
