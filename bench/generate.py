"""Build the benchmark database: a brewery's data, at a chosen scale, the same every time.

Scale 1 is about 500 MB of plain ``pg_dump`` output that ``gzip -6`` compresses 4 to 5 times:
recipes with free-text notes, batches with jsonb brewing parameters, millions of fermentation
readings (timestamps and numerics that drift as a real fermentation does, with sensor noise),
and an inventory with its movements. Every row is made inside the server (``generate_series``,
``random()`` after ``setseed``), so scale 1 takes a minute or two rather than an hour of
client round trips, and the same scale always gives the same data.

The database also holds the site's own tables (``manage.py migrate``), so the site can back it
up and restore it with the backup catalog inside, as it would in production.

    python bench/generate.py --database hoppybrew_bench_1x --scale 1

A second shape (``--shape series``, about 250 MB of plain dump at scale 1) is the kind of data
that compresses less and dumps slower: dense numeric sensor series in wide rows (twenty
measurements each, to four decimals, with noise), and random text (lab reports of random hex
words). gzip -6 shrinks it about 3 times, and every byte of it costs the compressor more.

    python bench/generate.py --database hoppybrew_bench_series_1x --scale 1 --shape series

An existing database with the same scale is kept; one left by another scale or by an
interrupted run is dropped and rebuilt. A database that this script did not create (no
benchmark comment) is never dropped.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
from psycopg2 import sql

PROJECT = Path(__file__).resolve().parent.parent
# Bump when the data changes, so that databases built by an older generator are rebuilt.
GENERATOR_VERSION = 2
COMMENT_PREFIX = "hoppybrew benchmark data"
SEED = 0.4242

# Rows at scale 1; every table but the small reference ones grows linearly with the scale.
ROWS = {
    "recipes": 20_000,
    "batches": 54_000,  # about 100 fermentation readings each: 5.4 million readings
    "suppliers": 400,
    "items": 20_000,
    "movements": 600_000,
}

WORDS = """
malt hops yeast wort mash boil whirlpool chill pitch ferment condition lager ale krausen
attenuation gravity sparge lauter vorlauf decoction infusion rest protein beta alpha amylase
dextrin crystal caramel munich vienna pilsner pale wheat rye oat chocolate roasted black patent
biscuit victory aromatic melanoidin acidulated smoked honey cascade centennial citra mosaic
simcoe amarillo saaz hallertau tettnang fuggles goldings chinook columbus nugget magnum warrior
galaxy nelson motueka riwaka sabro idaho strata dry hop late addition bittering flameout
aroma flavour body mouthfeel haze clarity head retention lacing carbonation esters phenols
diacetyl sulphur acetaldehyde fusel clean crisp dry sweet bitter tart sour funky juicy resinous
piney citrus grapefruit orange lemon lime mango passionfruit pineapple stone fruit peach apricot
berry cherry plum raisin toffee bread crust cracker grain earthy spicy pepper clove banana
bubblegum vanilla coconut oak barrel bourbon wine brett lacto pedio kettle souring starter
flask stir plate slurry harvest repitch viability vitality temperature ramp free rise cold crash
gelatin finings whirlfloc irish moss kegging bottling priming sugar dextrose corn cask firkin
pin sparkler nitro tap line pressure spunding valve blow off tube airlock carboy conical unitank
brite tank glycol jacket heat exchanger plate counterflow pump hose clamp tri clover gasket
seal sanitise clean caustic acid rinse star san peracetic iodophor water profile chloride
sulphate calcium magnesium sodium bicarbonate alkalinity residual ph meter calibrate refractometer
hydrometer sample tasting panel score notes batch recipe adjust next time increase decrease
keep same target hit missed efficiency volume loss trub dead space evaporation rate grain bill
percent ratio litres kilograms grams minutes hours days weeks steady slow fast stuck finished
""".split()

STYLES = [
    ("American IPA", "IPA"),
    ("New England IPA", "IPA"),
    ("West Coast IPA", "IPA"),
    ("Double IPA", "IPA"),
    ("Session IPA", "IPA"),
    ("American Pale Ale", "Pale Ale"),
    ("English Bitter", "Pale Ale"),
    ("Extra Special Bitter", "Pale Ale"),
    ("Belgian Blonde", "Belgian"),
    ("Belgian Dubbel", "Belgian"),
    ("Belgian Tripel", "Belgian"),
    ("Belgian Quadrupel", "Belgian"),
    ("Saison", "Belgian"),
    ("Witbier", "Wheat"),
    ("Hefeweizen", "Wheat"),
    ("Dunkelweizen", "Wheat"),
    ("Berliner Weisse", "Sour"),
    ("Gose", "Sour"),
    ("Flanders Red", "Sour"),
    ("Lambic", "Sour"),
    ("German Pils", "Lager"),
    ("Helles", "Lager"),
    ("Maerzen", "Lager"),
    ("Dunkel", "Lager"),
    ("Schwarzbier", "Lager"),
    ("Bock", "Lager"),
    ("Doppelbock", "Lager"),
    ("Vienna Lager", "Lager"),
    ("Koelsch", "Hybrid"),
    ("Altbier", "Hybrid"),
    ("Cream Ale", "Hybrid"),
    ("California Common", "Hybrid"),
    ("Irish Red", "Amber"),
    ("American Amber", "Amber"),
    ("Scottish Export", "Amber"),
    ("Brown Ale", "Brown"),
    ("Porter", "Dark"),
    ("Baltic Porter", "Dark"),
    ("Dry Stout", "Dark"),
    ("Oatmeal Stout", "Dark"),
    ("Milk Stout", "Dark"),
    ("Imperial Stout", "Dark"),
    ("Barleywine", "Strong"),
    ("Old Ale", "Strong"),
    ("Wee Heavy", "Strong"),
]

PEOPLE = "Ada Brigid Carlos Dana Emil Freya Gus Hana Ivo Jun Kofi Lena Mads Nia Otto Pia Quinn Rosa Sven Tove".split()
YEASTS = (
    "US-05 S-04 W-34/70 WLP001 WLP002 WLP300 WLP500 WLP565 WY1056 WY1318 WY3711 Verdant Kveik-Voss Nottingham".split()
)
HOPS = (
    "Cascade Centennial Citra Mosaic Simcoe Amarillo Saaz Hallertau Tettnang Fuggles Galaxy Nelson Sabro Magnum".split()
)
CATEGORIES = ["malt", "hops", "yeast", "adjunct", "chemical", "packaging", "cleaning"]
UNITS = {"malt": "kg", "hops": "g", "yeast": "pack", "adjunct": "kg", "chemical": "g", "packaging": "unit"}
STATUSES = ["planned", "brewing", "fermenting", "conditioning", "packaged", "dumped"]
REASONS = ["received", "brew", "brew", "brew", "stocktake", "waste", "return", "transfer"]
COUNTRIES = ["DE", "BE", "GB", "US", "NZ", "CZ", "NO", "FR", "NL", "AU"]


def sql_array(values):
    """A text[] literal for values that contain no quotes or backslashes."""
    return "(ARRAY[" + ",".join(f"'{value}'" for value in values) + "])"


def schema_sql():
    return """
CREATE TABLE brewery_style (
    id integer PRIMARY KEY,
    name text NOT NULL UNIQUE,
    family text NOT NULL
);
CREATE TABLE brewery_recipe (
    id integer PRIMARY KEY,
    name text NOT NULL,
    style_id integer NOT NULL REFERENCES brewery_style(id),
    author text NOT NULL,
    version integer NOT NULL,
    original_gravity numeric(5,3) NOT NULL,
    final_gravity numeric(5,3) NOT NULL,
    ibu numeric(5,1) NOT NULL,
    color_srm numeric(4,1) NOT NULL,
    batch_size_l numeric(7,1) NOT NULL,
    notes text NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE TABLE brewery_batch (
    id integer PRIMARY KEY,
    recipe_id integer NOT NULL REFERENCES brewery_recipe(id),
    code text NOT NULL UNIQUE,
    brewer text NOT NULL,
    status text NOT NULL,
    brewed_at timestamptz NOT NULL,
    volume_l numeric(8,2) NOT NULL,
    original_gravity numeric(5,4) NOT NULL,
    final_gravity numeric(5,4) NOT NULL,
    fermentation_c numeric(4,1) NOT NULL,
    parameters jsonb NOT NULL
);
CREATE TABLE brewery_fermentation_reading (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    batch_id integer NOT NULL REFERENCES brewery_batch(id),
    taken_at timestamptz NOT NULL,
    gravity numeric(5,4) NOT NULL,
    temperature_c numeric(4,1) NOT NULL,
    ph numeric(3,2),
    pressure_kpa numeric(5,1),
    sensor text NOT NULL
);
CREATE TABLE brewery_supplier (
    id integer PRIMARY KEY,
    name text NOT NULL,
    country char(2) NOT NULL,
    email text NOT NULL,
    phone text NOT NULL
);
CREATE TABLE brewery_inventory_item (
    id integer PRIMARY KEY,
    sku text NOT NULL UNIQUE,
    name text NOT NULL,
    category text NOT NULL,
    unit text NOT NULL,
    supplier_id integer NOT NULL REFERENCES brewery_supplier(id),
    quantity numeric(12,3) NOT NULL,
    reorder_level numeric(12,3) NOT NULL,
    unit_cost numeric(10,2) NOT NULL,
    lot text NOT NULL,
    best_before date,
    location text NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE TABLE brewery_inventory_movement (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    item_id integer NOT NULL REFERENCES brewery_inventory_item(id),
    batch_id integer REFERENCES brewery_batch(id),
    moved_at timestamptz NOT NULL,
    quantity numeric(12,3) NOT NULL,
    reason text NOT NULL,
    note text
);
"""


def data_steps(scale):
    """(label, SQL) pairs that fill the tables; counts follow the scale."""
    rows = {name: max(1, round(count * scale)) for name, count in ROWS.items()}
    words = sql_array(WORDS)
    pick = "(%s)[1 + floor(random() * %d)::int]"
    person = pick % (sql_array(PEOPLE), len(PEOPLE))
    return [
        (
            "helper functions",
            f"""
CREATE FUNCTION pg_temp.words(n integer) RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT string_agg({words}[1 + floor(random() * {len(WORDS)})::int], ' ')
    FROM generate_series(1, n)
$$;
""",
        ),
        (
            "styles",
            "INSERT INTO brewery_style (id, name, family) VALUES "
            + ",".join(f"({i}, '{name}', '{family}')" for i, (name, family) in enumerate(STYLES, 1))
            + ";",
        ),
        (
            f"{rows['recipes']:,} recipes",
            f"""
INSERT INTO brewery_recipe
SELECT i,
       initcap(pg_temp.words(2)) || ' ' || s.name,
       s.id,
       {person},
       1 + floor(random() * 6)::int,
       og, fg,
       round((10 + random() * 90)::numeric, 1),
       round((2 + random() * 38)::numeric, 1),
       (ARRAY[20, 25, 50, 100, 500, 1000])[1 + floor(random() * 6)::int],
       -- Notes in paragraphs, as brewers write them: a few sentences after each brew day.
       pg_temp.words(40 + (i * 37) % 90) || '.' || E'\\n\\n' || pg_temp.words(20 + (i * 11) % 60) || '.',
       created, created + (random() * 400) * interval '1 day'
FROM (
    SELECT i,
           1 + (i * 7919) % {len(STYLES)} AS style,
           round((1.035 + random() * 0.07)::numeric, 3) AS og,
           round((1.006 + random() * 0.012)::numeric, 3) AS fg,
           timestamptz '2018-01-01 00:00+00' + (i::float / {rows["recipes"]} * 2000) * interval '1 day' AS created
    FROM generate_series(1, {rows["recipes"]}) i
) r JOIN brewery_style s ON s.id = r.style;
""",
        ),
        (
            f"{rows['batches']:,} batches",
            f"""
INSERT INTO brewery_batch
SELECT i,
       recipe,
       'B' || to_char(brewed, 'YYYYMMDD') || '-' || lpad(i::text, 7, '0'),
       {person},
       CASE WHEN i > {rows["batches"]} - 40 THEN {sql_array(STATUSES)}[1 + (i % 4)]
            WHEN random() < 0.02 THEN 'dumped' ELSE 'packaged' END,
       brewed,
       round((18 + random() * 2000)::numeric, 2),
       og,
       round(og - (og - 1) * (0.70 + random() * 0.12)::numeric, 4),
       round((10 + random() * 10)::numeric, 1),
       jsonb_build_object(
           'mash', jsonb_build_object(
               'temperature_c', round((63 + random() * 6)::numeric, 1),
               'minutes', (ARRAY[45, 60, 60, 75, 90])[1 + floor(random() * 5)::int],
               'water_grist_ratio', round((2.5 + random() * 1.5)::numeric, 2)),
           'boil_minutes', (ARRAY[60, 60, 75, 90])[1 + floor(random() * 4)::int],
           'yeast', jsonb_build_object(
               'strain', {pick % (sql_array(YEASTS), len(YEASTS))},
               'pitch_rate', round((0.5 + random())::numeric, 2),
               'generation', 1 + floor(random() * 8)::int),
           'hops', (
               SELECT jsonb_agg(jsonb_build_object(
                   'variety', {pick % (sql_array(HOPS), len(HOPS))},
                   'grams', round((10 + random() * 400)::numeric),
                   'minute', (ARRAY[60, 30, 15, 5, 0, -3])[1 + floor(random() * 6)::int]))
               FROM generate_series(1, 2 + i % 4)),
           'water', jsonb_build_object(
               'ph', round((5.1 + random() * 0.5)::numeric, 2),
               'calcium_ppm', round((40 + random() * 110)::numeric),
               'sulfate_ppm', round((30 + random() * 300)::numeric),
               'chloride_ppm', round((30 + random() * 120)::numeric)),
           'efficiency_percent', round((68 + random() * 16)::numeric, 1),
           'brew_day_notes', pg_temp.words(6 + i % 12))
FROM (
    SELECT i,
           1 + floor(random() * {rows["recipes"]})::int AS recipe,
           round((1.035 + random() * 0.07)::numeric, 4) AS og,
           timestamptz '2019-01-01 06:00+00' + (i::float / {rows["batches"]} * 2000) * interval '1 day'
               + floor(random() * 600) * interval '1 minute' AS brewed
    FROM generate_series(1, {rows["batches"]}) i
) b;
""",
        ),
        (
            f"about {rows['batches'] * 100:,} fermentation readings",
            """
-- About 100 readings per batch, every two hours: gravity falls from the batch's original to its
-- final gravity, temperature holds near the set point, pH drops; every value carries sensor noise.
INSERT INTO brewery_fermentation_reading (batch_id, taken_at, gravity, temperature_c, ph, pressure_kpa, sensor)
SELECT b.id,
       b.brewed_at + interval '6 hours' + k * interval '2 hours' + floor(random() * 90) * interval '1 second',
       round(b.final_gravity + (b.original_gravity - b.final_gravity) * exp(-k / 22.0)::numeric
             + ((random() - 0.5) * 0.0016)::numeric, 4),
       round(b.fermentation_c + (2.5 * exp(-k / 8.0) + (random() - 0.5) * 0.6)::numeric, 1),
       CASE WHEN k % 6 = 0 THEN round((4.15 + 1.05 * exp(-k / 30.0) + (random() - 0.5) * 0.04)::numeric, 2) END,
       round((101.3 + least(k, 40) * 1.6 + (random() - 0.5) * 2)::numeric, 1),
       'tank-' || lpad((b.id % 48)::text, 2, '0') || '/probe-' || (1 + b.id % 3)
FROM brewery_batch b, LATERAL generate_series(1, 60 + (b.id * 7) % 81) k;
""",
        ),
        (
            f"{rows['suppliers']:,} suppliers",
            f"""
INSERT INTO brewery_supplier
SELECT i,
       initcap(pg_temp.words(2)) || ' ' || (ARRAY['Maltings', 'Hop Farm', 'Labs', 'Supplies', 'Trading'])[1 + i % 5],
       {pick % (sql_array(COUNTRIES), len(COUNTRIES))},
       'orders' || i || '@supplier' || i || '.example.com',
       '+' || (10 + floor(random() * 89)::int) || ' ' || lpad(floor(random() * 1e9)::bigint::text, 9, '0')
FROM generate_series(1, {rows["suppliers"]}) i;
""",
        ),
        (
            f"{rows['items']:,} inventory items",
            f"""
INSERT INTO brewery_inventory_item
SELECT i,
       upper(left(category, 3)) || '-' || lpad(i::text, 6, '0'),
       initcap(pg_temp.words(3)),
       category,
       coalesce({units_json()}->>category, 'unit'),
       1 + floor(random() * {rows["suppliers"]})::int,
       round((random() * 5000)::numeric, 3),
       round((50 + random() * 500)::numeric, 3),
       round((0.05 + random() * 300)::numeric, 2),
       'L' || to_char(timestamptz '2023-01-01' + random() * interval '900 days', 'YYMMDD') || '-' || (i % 97),
       CASE WHEN category IN ('malt', 'hops', 'yeast', 'adjunct')
            THEN date '2025-01-01' + floor(random() * 700)::int END,
       'Aisle ' || (1 + i % 24) || ', rack ' || (1 + i % 9),
       timestamptz '2024-06-01 00:00+00' + random() * interval '500 days'
FROM (
    SELECT i, {sql_array(CATEGORIES)}[1 + floor(random() * {len(CATEGORIES)})::int] AS category
    FROM generate_series(1, {rows["items"]}) i
) t;
""",
        ),
        (
            f"{rows['movements']:,} inventory movements",
            f"""
INSERT INTO brewery_inventory_movement (item_id, batch_id, moved_at, quantity, reason, note)
SELECT 1 + floor(random() * {rows["items"]})::int,
       CASE WHEN reason = 'brew'
            THEN least({rows["batches"]}, 1 + floor(i::float / {rows["movements"]} * {rows["batches"]})::int) END,
       timestamptz '2019-01-01 00:00+00' + (i::float / {rows["movements"]} * 2000) * interval '1 day'
           + floor(random() * 3600) * interval '1 second',
       CASE WHEN reason IN ('received', 'return') THEN 1 ELSE -1 END * round((0.1 + random() * 250)::numeric, 3),
       reason,
       CASE WHEN random() < 0.15 THEN pg_temp.words(4 + i % 9) END
FROM (
    SELECT i, {sql_array(REASONS)}[1 + floor(random() * {len(REASONS)})::int] AS reason
    FROM generate_series(1, {rows["movements"]}) i
) m;
""",
        ),
        (
            "indexes and statistics",
            """
CREATE INDEX brewery_recipe_style_idx ON brewery_recipe (style_id);
CREATE INDEX brewery_batch_recipe_idx ON brewery_batch (recipe_id);
CREATE INDEX brewery_batch_brewed_idx ON brewery_batch (brewed_at);
CREATE INDEX brewery_reading_batch_time_idx ON brewery_fermentation_reading (batch_id, taken_at);
CREATE INDEX brewery_item_supplier_idx ON brewery_inventory_item (supplier_id);
CREATE INDEX brewery_movement_item_idx ON brewery_inventory_movement (item_id, moved_at);
CREATE INDEX brewery_movement_batch_idx ON brewery_inventory_movement (batch_id);
ANALYZE;
""",
        ),
    ]


# The second shape's rows at scale 1.
SERIES_ROWS = {"samples": 1_000_000, "reports": 120_000}
SERIES_COLUMNS = 20


def series_schema_sql():
    measurements = ",\n".join(f"    m{n:02d} numeric(10,4) NOT NULL" for n in range(SERIES_COLUMNS))
    return f"""
CREATE TABLE lab_sensor_sample (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    tank integer NOT NULL,
    taken_at timestamptz NOT NULL,
{measurements},
    status smallint NOT NULL
);
CREATE TABLE lab_report (
    id integer PRIMARY KEY,
    code text NOT NULL,
    sample_id bigint NOT NULL,
    body text NOT NULL,
    checksum text NOT NULL
);
"""


def series_data_steps(scale):
    rows = {name: max(1, round(count * scale)) for name, count in SERIES_ROWS.items()}
    # Each measurement drifts slowly and carries noise in its last digits, which compress
    # poorly, as real sensor data does.
    measurements = ", ".join(
        f"round(({10 * (n + 1)} + {n + 1} * sin(i / {60.0 + n}) + random() * {0.5 + n / 10})::numeric, 4)"
        for n in range(SERIES_COLUMNS)
    )
    return [
        (
            "helper functions",
            """
-- Words of random hex digits, about n characters.
CREATE FUNCTION pg_temp.random_text(n integer) RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT string_agg(left(md5(random()::text), 4 + floor(random() * 28)::int), ' ')
    FROM generate_series(1, greatest(1, n / 19))
$$;
""",
        ),
        (
            f"{rows['samples']:,} sensor samples",
            f"""
INSERT INTO lab_sensor_sample (tank, taken_at, {", ".join(f"m{n:02d}" for n in range(SERIES_COLUMNS))}, status)
SELECT 1 + i % 64, timestamptz '2024-01-01 00:00+00' + i * interval '7 seconds', {measurements},
       (random() < 0.01)::int
FROM generate_series(1, {rows["samples"]}) i;
""",
        ),
        (
            f"{rows['reports']:,} lab reports",
            f"""
INSERT INTO lab_report
SELECT i, upper(pg_temp.random_text(12)), 1 + floor(random() * {rows["samples"]})::bigint,
       pg_temp.random_text(200 + i % 400), md5(i::text) || md5((i * 7)::text)
FROM generate_series(1, {rows["reports"]}) i;
""",
        ),
        (
            "indexes and statistics",
            "CREATE INDEX lab_sample_tank_time_idx ON lab_sensor_sample (tank, taken_at);\nANALYZE;",
        ),
    ]


# What each shape is made of: (schema, data steps).
SHAPES = {"brewery": (schema_sql, data_steps), "series": (series_schema_sql, series_data_steps)}


def units_json():
    pairs = ", ".join(f"'{category}', '{unit}'" for category, unit in UNITS.items())
    return f"jsonb_build_object({pairs})"


def server_url(url, database):
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def connect(url):
    connection = psycopg2.connect(url)
    connection.autocommit = True
    return connection


def expected_comment(scale, shape="brewery"):
    return f"{COMMENT_PREFIX}: shape={shape} scale={scale:g} generator={GENERATOR_VERSION}"


def current_comment(admin, database):
    with admin.cursor() as cursor:
        cursor.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (database,))
        row = cursor.fetchone()
    if row is None:
        return None
    return row[0] or ""


def prepare_database(admin, database, scale, shape):
    """True when the database must be filled; drops a stale benchmark database first."""
    comment = current_comment(admin, database)
    if comment == expected_comment(scale, shape):
        return False
    with admin.cursor() as cursor:
        if comment is not None:
            if not comment.startswith(COMMENT_PREFIX):
                sys.exit(f"{database} exists and was not made by this script; choose another name (BENCH_DB).")
            print(f"Dropping {database} ({comment})", flush=True)
            cursor.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database)))
        cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        cursor.execute(
            sql.SQL("COMMENT ON DATABASE {} IS %s").format(sql.Identifier(database)),
            (f"{COMMENT_PREFIX}: incomplete",),
        )
    return True


def migrate(url):
    """The site's own tables (the backup catalog among them), as on a real deployment."""
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "hoppybrew_site.settings"}
    subprocess.run([sys.executable, str(PROJECT / "manage.py"), "migrate", "--noinput", "-v", "0"], check=True, env=env)


def fill(url, scale, shape):
    connection = connect(url)
    with connection.cursor() as cursor:
        # One process per statement keeps random() after setseed() in one deterministic sequence.
        cursor.execute("SET max_parallel_workers_per_gather = 0")
        cursor.execute("SET synchronous_commit = off")
        cursor.execute("SET maintenance_work_mem = '256MB'")
        cursor.execute("SELECT setseed(%s)", (SEED,))
        schema, steps = SHAPES[shape]
        cursor.execute(schema())
        for label, statement in steps(scale):
            started = time.monotonic()
            cursor.execute(statement)
            print(f"  {label}: {time.monotonic() - started:.1f} s", flush=True)
    connection.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1 is about 500 MB of plain dump (default 1)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="brewery", help="the kind of data (default brewery)")
    parser.add_argument("--database", required=True, help="name of the benchmark database")
    parser.add_argument(
        "--server",
        default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432"),
        help="PostgreSQL server URL without a database (default $BENCH_PG_URL or postgres://postgres@127.0.0.1:5432)",
    )
    args = parser.parse_args()
    if args.scale <= 0:
        parser.error("--scale must be positive")
    admin = connect(server_url(args.server, "postgres"))
    if not prepare_database(admin, args.database, args.scale, args.shape):
        print(f"{args.database} already holds the {args.shape} data of scale {args.scale:g}", flush=True)
        return
    url = server_url(args.server, args.database)
    started = time.monotonic()
    print(f"Generating {args.database}: {args.shape} data at scale {args.scale:g}", flush=True)
    migrate(url)
    fill(url, args.scale, args.shape)
    with admin.cursor() as cursor:
        cursor.execute(
            sql.SQL("COMMENT ON DATABASE {} IS %s").format(sql.Identifier(args.database)),
            (expected_comment(args.scale, args.shape),),
        )
        cursor.execute("SELECT pg_size_pretty(pg_database_size(%s))", (args.database,))
        size = cursor.fetchone()[0]
    admin.close()
    print(f"{args.database}: {size} on disk, generated in {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
