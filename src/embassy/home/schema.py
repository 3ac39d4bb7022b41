"""The register schemas of the home state: one PostgreSQL database per postgres register.

Known registers get a realistic schema (population, land-register); any other
postgres register gets a generic record table, so that every stack can be deployed.
"""

from __future__ import annotations

POPULATION = """
CREATE TABLE persons (
    id            bigint PRIMARY KEY,
    isikukood     char(11) NOT NULL UNIQUE,
    first_name    text NOT NULL,
    last_name     text NOT NULL,
    sex           char(1) NOT NULL CHECK (sex IN ('M', 'F')),
    birth_date    date NOT NULL,
    citizenship   char(2) NOT NULL,
    native_language text NOT NULL,
    status        text NOT NULL CHECK (status IN ('alive', 'deceased')),
    registered_at timestamptz NOT NULL
);
CREATE TABLE addresses (
    id           bigint PRIMARY KEY,
    person_id    bigint NOT NULL REFERENCES persons (id),
    county       text NOT NULL,
    municipality text NOT NULL,
    settlement   text NOT NULL,
    street       text NOT NULL,
    house        text NOT NULL,
    apartment    text NOT NULL,
    postal_code  char(5) NOT NULL,
    ads_oid      text NOT NULL,
    valid_from   date NOT NULL,
    valid_to     date
);
CREATE INDEX addresses_person_idx ON addresses (person_id);
CREATE TABLE documents (
    id        bigint PRIMARY KEY,
    person_id bigint NOT NULL REFERENCES persons (id),
    kind      text NOT NULL CHECK (kind IN ('id-card', 'passport', 'residence-permit', 'digi-id')),
    number    text NOT NULL UNIQUE,
    issued    date NOT NULL,
    expires   date NOT NULL,
    issuer    text NOT NULL
);
CREATE INDEX documents_person_idx ON documents (person_id);
"""

LAND_REGISTER = """
CREATE TABLE parcels (
    cadastral_number text PRIMARY KEY,
    registry_part    integer NOT NULL UNIQUE,
    county           text NOT NULL,
    municipality     text NOT NULL,
    settlement       text NOT NULL,
    address          text NOT NULL,
    area_m2          integer NOT NULL CHECK (area_m2 > 0),
    purpose          text NOT NULL,
    valuation_eur    numeric(12, 2) NOT NULL,
    registered       date NOT NULL
);
CREATE TABLE owners (
    id          bigint PRIMARY KEY,
    parcel      text NOT NULL REFERENCES parcels (cadastral_number),
    owner_kind  text NOT NULL CHECK (owner_kind IN ('person', 'company', 'state', 'municipality')),
    owner_code  text NOT NULL,
    owner_name  text NOT NULL,
    share       text NOT NULL,
    since       date NOT NULL
);
CREATE INDEX owners_parcel_idx ON owners (parcel);
CREATE TABLE deeds (
    id        bigint PRIMARY KEY,
    parcel    text NOT NULL REFERENCES parcels (cadastral_number),
    entry_no  integer NOT NULL,
    kind      text NOT NULL CHECK (kind IN ('purchase', 'gift', 'inheritance', 'mortgage', 'servitude')),
    signed    date NOT NULL,
    notary    text NOT NULL,
    price_eur numeric(14, 2),
    UNIQUE (parcel, entry_no)
);
"""

GENERIC = """
CREATE TABLE records (
    id         bigint PRIMARY KEY,
    reference  text NOT NULL UNIQUE,
    title      text NOT NULL,
    body       jsonb NOT NULL,
    created_at timestamptz NOT NULL
);
"""

# What was loaded, by which generator: the deploy's idempotence check and the service's health read it.
SEED_TABLE = """
CREATE TABLE embassy_seed (
    register   text PRIMARY KEY,
    seed       bigint NOT NULL,
    size_mb    double precision NOT NULL,
    generator  text NOT NULL,
    rows       bigint NOT NULL,
    loaded_at  timestamptz NOT NULL DEFAULT now()
);
"""

SCHEMAS: dict[str, str] = {"population": POPULATION, "land-register": LAND_REGISTER}
# Tables in load order (foreign keys first), per schema.
TABLES: dict[str, tuple[str, ...]] = {
    "population": ("persons", "addresses", "documents"),
    "land-register": ("parcels", "owners", "deeds"),
}
GENERIC_TABLES = ("records",)


def database_name(register: str) -> str:
    """PostgreSQL database of a register: its name with '-' as '_' (no quoting needed anywhere)."""
    return register.replace("-", "_")


def ddl(register: str) -> str:
    return SCHEMAS.get(register, GENERIC) + SEED_TABLE


def tables(register: str) -> tuple[str, ...]:
    return TABLES.get(register, GENERIC_TABLES)
