"""The one configuration object of bookrec.

Values come, highest priority first, from: keyword arguments, ``BOOKREC_*`` environment
variables (plus the spec's ``REDIS_URL``, ``ENVIRONMENT`` and ``OPTIMIZER_N_CALLS``), a TOML file
(``BOOKREC_CONFIG``, default ``./bookrec.toml`` when it exists), then the defaults below.
Every part of the system reads its knobs from here; no magic numbers elsewhere.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, create_model, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from bookrec.contracts.params import settings_fields

Environment = Literal["development", "staging", "production"]


def _toml_path() -> Path:
    return Path(os.environ.get("BOOKREC_CONFIG", "bookrec.toml"))


# One optional field per parameter the tuner's file may set (bookrec.contracts.params): None = the
# preset's value (or the model's default).
ModelOverrides = create_model("ModelOverrides", __base__=BaseSettings, **settings_fields())


class Settings(ModelOverrides):
    model_config = SettingsConfigDict(
        env_prefix="BOOKREC_",
        extra="ignore",
        populate_by_name=True,
    )

    # --- where things live -------------------------------------------------------------
    data_dir: Path = Field(Path("var/data"), description="Normalised data directory (bookrec data import/synth --out)")
    store_url: str = Field(
        "sqlite:///var/bookrec.sqlite3",
        validation_alias=AliasChoices("BOOKREC_STORE_URL", "REDIS_URL", "store_url"),
        description="redis://[:password@]host:port/db, rediss://..., or sqlite:///path",
    )
    store_prefix: str = Field("bookrec", description="Key prefix in a Redis-protocol store")
    store_publish_lease_seconds: float = Field(
        15.0, gt=0, description="Store: a publisher's lease, renewed while it runs; a killed publisher blocks the next this long"
    )
    store_compress: bool = Field(True, description="Store recommendation/book payloads LZ4-compressed (reads expand them)")
    require_converged: bool = Field(False, description="The batch refuses to publish a model whose chains did not converge")
    environment: Environment = Field(
        "development",
        validation_alias=AliasChoices("BOOKREC_ENVIRONMENT", "ENVIRONMENT", "environment"),
        description="Batch preset: development | staging | production",
    )
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="Log records: auto (rich on a terminal, else JSON lines), json or text (one line each)"
    )
    metrics_textfile: Path | None = Field(
        None, description="`bookrec batch` writes its outcome and duration here for node_exporter's textfile collector"
    )

    # --- data preparation ------------------------------------------------------------
    seed: int = 42
    synth_preset: Literal["tiny", "small", "full"] = "small"
    min_user_ratings: int = Field(5, ge=1, description="k-core: explicit ratings per user kept for training")
    min_book_ratings: int = Field(10, ge=1, description="k-core: explicit ratings per book kept for training")
    validation_fraction: float = Field(0.1, ge=0.0, lt=0.5)
    test_fraction: float = Field(0.1, ge=0.0, lt=0.5)
    import_max_expanded_mb: float = Field(
        4096, gt=0, description="Import: largest total size of the three CSV files, after decompression (MB)"
    )
    import_max_ratio: float = Field(
        100, gt=1, description="Import: largest expansion ratio of a zip member (a guard against zip bombs)"
    )

    # --- model (the BOOKREC_* overrides of its parameters come from ModelOverrides) --
    rating_min: float = 1.0
    rating_max: float = 10.0
    # The convergence rule (Vehtari et al. 2021): every traced quantity needs rank-normalised split
    # R-hat below this and bulk and tail ESS (summed over the chains) at least this.
    rhat_threshold: float = Field(1.01, gt=1.0, description="Converged: R-hat of every traced quantity below this")
    min_ess: float = Field(400.0, gt=0, description="Converged: bulk and tail ESS of every traced quantity at least this")

    # --- batch -----------------------------------------------------------------------
    top_n: int | None = Field(None, ge=1, le=200, description="Recommendations stored per user (None = preset)")
    interval_level: float = Field(0.9, gt=0.0, lt=1.0, description="Credible level of stored intervals")
    tuned_config_path: Path = Field(
        Path("var/tuned-params.json"), description="Best parameters written by `bookrec optimize`, read by `bookrec batch`"
    )
    popularity_min_segment_ratings: int = Field(
        200, ge=1, description="Tier 4: a country / age-band segment gets its own list from this many explicit ratings"
    )
    batch_chunk_users: int = Field(2048, ge=64, description="Readers scored per chunk in the batch (memory vs speed)")
    dask_scheduler: str | None = Field(
        None, description="Dask scheduler address (tcp://host:8786) the batch runs on; unset or empty = one process"
    )
    dask_connect_timeout: float = Field(30.0, gt=0, description="Seconds the batch waits for the Dask scheduler to answer")

    # --- relevance and the default ranking (for_you) -------------------------------------
    relevance_l2: float | None = Field(
        None, gt=0, description="Ridge of the relevance model (None = chosen by held-out recall on a grid)"
    )
    relevance_popularity_l2: float = Field(
        0.0, ge=0.0, description="Extra prior precision per reader of a book (used when BOOKREC_RELEVANCE_L2 is set)"
    )
    relevance_max_items: int = Field(
        6000, ge=10, le=30_000, description="Most read works the relevance model ranks (its dense matrix is this squared)"
    )
    relevance_min_item_interactions: int = Field(2, ge=1, description="Readers a work needs to be a relevance candidate")
    n_candidates: int = Field(30, ge=1, le=1000, description="Most relevant unread works each ranking mode orders")
    like_weight: float = Field(0.25, ge=0.0, description="for_you = relevance x P(liked)^like_weight")
    liked_quantile: float = Field(
        0.7, gt=0.0, lt=1.0, description="Liked = a rating in the top (1 - this) of the rating range (>= 7.3 on 1-10)"
    )
    ranking_eval_readers: int = Field(3000, ge=100, description="Readers sampled for the batch's top-N evaluation")

    # --- optimizer ---------------------------------------------------------------------
    optimizer_n_calls: int = Field(
        20, ge=1, validation_alias=AliasChoices("BOOKREC_OPTIMIZER_N_CALLS", "OPTIMIZER_N_CALLS", "optimizer_n_calls")
    )
    optimizer_timeout: float | None = Field(None, gt=0, description="Seconds `bookrec optimize` may run (None = no limit)")
    optuna_storage: str = "sqlite:///var/optuna.db"
    optuna_study: str = "bookrec"
    tuned_from: str | None = Field(
        None, description="Optuna storage URL the batch reads the tuned parameters from (None = the local tuned file)"
    )
    tuned_study: str | None = Field(None, description="Study the batch reads the tuned parameters from (None = optuna_study)")

    # --- API ---------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    api_workers: int = Field(1, ge=1)
    cors_origins: list[str] = Field(default_factory=lambda: ["http://localhost:3000", "http://127.0.0.1:3000"])
    max_top_k: int = Field(100, ge=1)
    max_cold_start_ratings: int = Field(200, ge=1)
    max_request_bytes: int = Field(64 * 1024, ge=1024)
    store_timeout_seconds: float = Field(2.0, gt=0)
    retry_after_seconds: int = Field(5, ge=1)
    version_refresh_seconds: float = Field(1.0, ge=0, description="How long the API trusts its cached current-version pointer")
    serve_static: bool = True
    store_pool_size: int = Field(64, ge=1, le=1024, description="Store connections per API worker")
    max_page_size: int = Field(500, ge=1, le=10_000, description="Largest `limit` of /users and /books")
    max_random_users: int = Field(100, ge=1, le=1000)
    max_search_results: int = Field(50, ge=1, le=500)
    serving_max_samples: int | None = Field(
        None, ge=1, description="Posterior samples the API keeps for fold-in and similarity (None = all published)"
    )
    api_access_log: bool = Field(False, description="uvicorn access log (off: it costs ~15% throughput)")
    api_max_header_bytes: int = Field(
        16 * 1024, ge=1024, description="Largest request head (request line and headers) the server reads; more: 431"
    )
    api_max_headers: int = Field(100, ge=10, description="Most header fields in one request; more: 431")
    api_header_timeout_seconds: float = Field(
        10.0, gt=0, description="A request head must arrive within this many seconds of its first byte (or of the connection)"
    )
    api_body_timeout_seconds: float = Field(
        10.0, gt=0, description="A request body must arrive within this many seconds of the end of its head"
    )
    api_keepalive_timeout_seconds: float = Field(5.0, gt=0, description="An idle keep-alive connection is closed after this")
    api_linger_seconds: float = Field(
        1.0, gt=0, description="A refused connection is closed this long after its answer, so that the client can read it"
    )
    coalesce_store_reads: bool = Field(
        True, description="Serve concurrent GET /recommend reads with one multi-get per event-loop turn"
    )
    fault_log_interval_seconds: float = Field(
        10.0, gt=0, description="Repeated store faults of one kind are logged once per this interval, with a count"
    )
    forwarded_allow_ips: str = Field(
        "", description="Proxies trusted to name the client in X-Forwarded-For (comma-separated addresses, or *); "
                        "empty: a client is the connection's address"
    )
    # Per client address and API worker (a token bucket): the costly endpoints answer 429 with
    # Retry-After beyond these. 0 = no limit.
    rate_limit_cold_start_per_minute: float = Field(30, ge=0, description="POST /recommend/cold-start per client")
    rate_limit_cold_start_burst: int = Field(10, ge=1, description="Cold starts a client may send at once")
    rate_limit_search_per_minute: float = Field(600, ge=0, description="/books/search (GET and POST) per client")
    rate_limit_search_burst: int = Field(60, ge=1, description="Searches a client may send at once (type-ahead)")
    rate_limit_max_clients: int = Field(
        10_000, ge=1, description="Client addresses the rate limiter remembers (least recently seen forgotten first)"
    )

    @model_validator(mode="after")
    def _rating_scale_is_a_range(self) -> "Settings":
        if not self.rating_min < self.rating_max:
            raise ValueError(f"rating_min ({self.rating_min:g}) must be below rating_max ({self.rating_max:g})")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_path = _toml_path()
        if toml_path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (tests build their own ``Settings(...)`` instead)."""
    return Settings()
