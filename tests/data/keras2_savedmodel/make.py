"""Writes the Keras 2 SavedModel fixture beside this file: a digits CNN built and trained with
tf_keras' legacy Adam and saved in TF SavedModel format with its optimizer state (the slot
variables that TF2's loader cannot revive without tf_keras), plus the Keras model's own eval
predictions. The fixture is committed so the tests need no tf-keras (which would pull in the full
`tensorflow` build beside `tensorflow-cpu`). Regenerate with:

    pip install tf-keras && python tests/data/keras2_savedmodel/make.py tests/data/keras2_savedmodel/digits_keras2 tests/data/keras2_savedmodel/keras_eval_probs.npy
"""

import sys

import numpy as np
import tf_keras

from calibration_data.digits import load_split

out, ref = sys.argv[1], sys.argv[2]
tf_keras.utils.set_random_seed(0)
x, y = load_split("train")
model = tf_keras.Sequential([
    tf_keras.layers.Input((8, 8, 1), name="image"),
    tf_keras.layers.Conv2D(8, 3, activation="relu"),
    tf_keras.layers.Flatten(),
    tf_keras.layers.Dense(10, activation="softmax"),
])
model.compile(tf_keras.optimizers.legacy.Adam(1e-2), "sparse_categorical_crossentropy")
model.fit(x, y, epochs=3, batch_size=32, verbose=0)
model.save(out, save_format="tf")  # include_optimizer=True: the Adam slots are saved too
np.save(ref, model.predict(load_split("eval")[0], verbose=0))
