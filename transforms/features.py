"""Every feature key, vocabulary name and served name used by IDPT.

The canonical raw log has one row per impression or interaction:

  user_id    string   the user (query side); read as a string, never parsed
  item_id    string   the item (candidate side); read as a string, never parsed
  timestamp  int64    seconds since the epoch
  label      int64    1 if the user engaged with the item, else 0
  weight     float32  optional per-row weight for engaged rows
  user_*     optional user side features, categorical strings or numbers
  item_*     optional item side features, categorical strings or numbers

Readers, the ingestion component, `preprocessing_fn`, both trainers, the
signatures, the evaluation config and the serving client import their names
from here, so a key is spelt in exactly one place.
"""

from __future__ import annotations

# Canonical raw columns.
USER_ID = "user_id"
ITEM_ID = "item_id"
TIMESTAMP = "timestamp"
LABEL = "label"
WEIGHT = "weight"

REQUIRED_COLUMNS = (USER_ID, ITEM_ID, TIMESTAMP, LABEL)
OPTIONAL_COLUMNS = (WEIGHT,)
ID_COLUMNS = (USER_ID, ITEM_ID)

USER_FEATURE_PREFIX = "user_"
ITEM_FEATURE_PREFIX = "item_"

# Empty or whitespace-only ids are "missing". Readers drop rows with a missing
# user or item id and count them; a missing id that reaches the Transform graph
# (a serving request) maps to the OOV index like an unseen id.
MISSING_ID_RULE = "rows with an empty or whitespace-only id are dropped and counted"

# Split names written by the ingestion component, in time order.
TRAIN_SPLIT = "train"
EVAL_SPLIT = "eval"
TEST_SPLIT = "test"
SPLITS = (TRAIN_SPLIT, EVAL_SPLIT, TEST_SPLIT)

# Vocabularies. Each id column gets NUM_OOV_BUCKETS extra indices after its
# vocabulary: with V tokens, tokens take 0..V-1 and every unseen or missing id
# takes index V.
NUM_OOV_BUCKETS = 1
DEFAULT_FREQUENCY_THRESHOLD = 1

TRANSFORMED_SUFFIX = "_xf"

# Item popularity bucket from the item's train count, its number of engaged
# (label 1) rows in the train split: bucket 0 is count 0 (never engaged in train,
# or unseen), 1 is count 1, 2 is 2-4, 3 is 5-19, 4 is 20-99,
# 5 is 100 or more. Boundaries are the lowest count of buckets 1..5.
POPULARITY_BUCKET_BOUNDARIES = (1, 2, 5, 20, 100)
POPULARITY_BUCKET_NAMES = ("0", "1", "2-4", "5-19", "20-99", ">=100")

# Derived features present in every transformed example, for evaluation slices
# and for the logQ correction: the item's train count (int64), its sampling
# probability (train count / engaged train rows, float32), its popularity
# bucket (int64) and whether the user has any row in the train split (int64 0/1).
ITEM_POPULARITY_BUCKET = "item_popularity_bucket"
USER_IS_RETURNING = "user_is_returning"
ITEM_TRAIN_COUNT = "item_train_count"
ITEM_SAMPLING_PROBABILITY = "item_sampling_probability"

# Transform output contract. Every raw canonical column is also passed through
# unchanged under its raw name (ids as strings), so the Evaluator can feed
# transformed eval examples to a signature that parses raw features and still
# slice on the derived features above. Ids and categorical side features get
# transformed_name(key) as an int64 vocabulary index; numeric side features get
# transformed_name(key) as float32 after imputation, clipping and log scaling.
# The item vocabulary weighted by label is written as ENGAGED_ITEM_COUNTS
# ("count token" lines) so trainers can sample negatives by train count.
ENGAGED_ITEM_COUNTS = "item_id_engaged_counts"
# The same engaged item ids as a plain vocabulary in the same order; an id's line
# there is its line in ENGAGED_ITEM_COUNTS.
ENGAGED_ITEM_ORDER = "item_id_engaged_order"

# Embedding export written by the Stage I trainer inside its model artifact, one
# folder per table: EMBEDDING_EXPORT_DIR/<table>/TOKENS_FILE contains the table's
# vocabulary, one UTF-8 token per line in row order, and MATRIX_FILE contains a
# float32 NumPy array of shape (len(tokens) + NUM_OOV_BUCKETS, dimension) whose
# last rows are the OOV rows. The format is the same for every distribution
# strategy.
EMBEDDING_EXPORT_DIR = "embeddings"
EMBEDDING_TOKENS_FILE = "tokens.txt"
EMBEDDING_MATRIX_FILE = "embeddings.npy"

# Files the Stage I trainer writes beside its serving SavedModel: the resolved
# trainer config and the per-epoch eval metrics, whose "final" entry the
# retrieval gate reads.
STAGE1_CONFIG_FILE = "stage1_config.json"
STAGE1_HISTORY_FILE = "stage1_history.json"

# Served names.
RANKING_MODEL_NAME = "ranking"
RETRIEVAL_MODEL_NAME = "retrieval"
SERVING_DEFAULT_SIGNATURE = "serving_default"
PREDICT_SIGNATURE = "predict"
QUERY_EMBEDDING_SIGNATURE = "query_embedding"
RETRIEVE_SIGNATURE = "retrieve"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
# The path of the SavedModel a version was copied from, one UTF-8 line. A rerun whose
# trainer was cached offers the same SavedModel again, and the pusher skips it.
PUSH_SOURCE_FILE = "assets.extra/idpt_pushed_from.txt"

# Output keys of the signatures.
SCORE_OUTPUT = "score"
QUERY_EMBEDDING_OUTPUT = "query_embedding"
TOP_ITEM_IDS_OUTPUT = "item_ids"
TOP_SCORES_OUTPUT = "scores"


def transformed_name(key: str) -> str:
    """Return the name of the Transform output derived from raw feature `key`."""
    return key + TRANSFORMED_SUFFIX


def vocabulary_name(key: str) -> str:
    """Return the Transform vocabulary file name for raw feature `key`."""
    return key + "_vocabulary"


def is_side_feature(key: str) -> bool:
    """Return True for optional user or item side features such as `item_genre`."""
    if key in REQUIRED_COLUMNS or key in OPTIONAL_COLUMNS:
        return False
    return key.startswith(USER_FEATURE_PREFIX) or key.startswith(ITEM_FEATURE_PREFIX)


def popularity_bucket(train_count: int) -> int:
    """Return the item popularity bucket (0..5) for an item's train-split row count."""
    bucket = 0
    for boundary in POPULARITY_BUCKET_BOUNDARIES:
        if train_count >= boundary:
            bucket += 1
    return bucket


# Per-user training history exported beside the retrieval model, at
# <base>/retrieval/<version>/USER_HISTORY_FILE. It lists, for each user in the
# train split, the items they engaged with (label 1), so a recommend call can
# leave them out. Format: UTF-8 JSON Lines, one object per user,
#   {"user_id": "<id>", "item_ids": ["<id>", ...]}
# with the keys USER_ID and USER_HISTORY_ITEMS_KEY; ids are the exact strings.
USER_HISTORY_FILE = "assets.extra/idpt_user_history.jsonl"
USER_HISTORY_ITEMS_KEY = "item_ids"

# Input name of the serving_default signature: a batch of serialized tf.Example
# protos (tf.string, shape [None]), as TF Serving's Predict and Classify send.
SERVING_EXAMPLES_INPUT = "examples"

# Every user with a row in the train split, written by Transform only when the
# user vocabulary is cut by a frequency threshold or top_k (otherwise the user
# vocabulary is that list); USER_IS_RETURNING is looked up in it.
TRAIN_USERS_VOCABULARY = "user_id_train_users"

# Side features produced by the built-in readers. MovieLens 100K: the user's age
# (a number), gender and occupation from u.user; the item's title, first genre
# and release year (a number) from u.item. The synthetic log generator: the
# user's country and device, the item's category and price (a number).
USER_AGE = "user_age"
USER_GENDER = "user_gender"
USER_OCCUPATION = "user_occupation"
ITEM_TITLE = "item_title"
ITEM_GENRE = "item_genre"
ITEM_YEAR = "item_year"
USER_COUNTRY = "user_country"
USER_DEVICE = "user_device"
ITEM_CATEGORY = "item_category"
ITEM_PRICE = "item_price"

# Files the Stage II trainer writes into its serving SavedModel folder, beside
# the warmup records: the resolved Stage II config, and the warm-start counts
# per id table (rows copied from Stage I, initialised fresh, Stage I rows
# ignored) with the distillation teacher's calibration. Both are JSON.
STAGE2_CONFIG_FILE = "assets.extra/idpt_stage2_config.json"
WARM_START_COUNTS_FILE = "assets.extra/idpt_warm_start_counts.json"
