{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='event_date',
        on_schema_change='sync_all_columns',
    )
}}

-- The table follows the model's columns (on_schema_change above): a column added to the spec
-- (or here) joins it, and days built before read null in it until they are built again (a
-- backfill, or features_job's full_refresh); a column removed leaves it. Dagster refuses a build
-- that would remove one a deployed model version needs (defs/features/assets.py).
-- One row of model features per transaction, built only from what was known before its event
-- time: card history strictly before it, and merchant labels made on earlier days. Each run computes the days min_date..max_date and reads only the
-- lookback their windows need, so a day costs the same at day 60 as at day 5 of history.

{% set lookback = var('card_lookback_days') %}
{% set label_window = var('merchant_label_window_days') %}

with history as (
    -- Amounts are summed as exact decimals: a sum of doubles depends on the order DuckDB adds
    -- them in, which changes with the run's range and threads, so a re-run would differ in the
    -- last bits. 12 decimals keep every amount the contract allows.
    select *, amount::decimal(38, 12) as amount_exact
    from {{ ref('stg_transactions') }}
    where event_date between {{ min_date() }} - {{ lookback }} and {{ max_date() }}
),

computed as (
    select *
    from history
    where event_date between {{ min_date() }} and {{ max_date() }}
),

card_history as (
    -- Each computed transaction against its card's earlier transactions within the lookback.
    -- Strictly earlier: a transaction at the same instant is not history. (A join, not window
    -- frames: windows would be evaluated for every row of the lookback, not just the computed
    -- days.)
    select
        c.transaction_id,
        -- One count and one sum per velocity window of the spec (dbt_project.yml).
        {%- for name, hours in var('card_velocity_windows').items() %}
        count(p.transaction_id) filter (where p.event_ts >= c.event_ts - interval {{ hours }} hour)
            as card_tx_count_{{ name }},
        coalesce(sum(p.amount_exact) filter (where p.event_ts >= c.event_ts - interval {{ hours }} hour), 0)::double
            as card_amount_sum_{{ name }},
        {%- endfor %}
        avg(p.amount_exact)::double as card_amount_avg_lookback,
        max(p.event_ts) as card_last_ts,
        count(p.transaction_id) filter (where p.device_id = c.device_id) as device_seen,
        count(p.transaction_id) filter (where p.country = c.country) as country_seen,
        count(p.transaction_id) filter (where p.channel = c.channel) as channel_seen
    from computed as c
    left join history as p
        on
            c.card_id = p.card_id
            and p.event_ts < c.event_ts
            and p.event_ts >= c.event_ts - interval {{ lookback }} day
    group by c.transaction_id
),

labels as (
    -- Labels that can count for a computed day, with the merchant of their transaction.
    select
        l.transaction_id,
        l.label_date,
        l.labeled_ts,
        l.is_fraud,
        t.merchant_id
    from {{ ref('stg_labels') }} as l
    inner join {{ ref('stg_transactions') }} as t on l.transaction_id = t.transaction_id
    where
        l.label_date between {{ min_date() }} - {{ label_window }} and {{ max_date() }} - 1
        -- A label made long after its transaction is not joined back: the rule depends on the
        -- label alone, so a day's features are the same whichever run range computes them.
        and t.event_date >= l.label_date - {{ var('label_join_horizon_days') }}
        -- (implied by the two conditions above; lets DuckDB skip older transactions early)
        and t.event_date >= {{ min_date() }} - {{ label_window }} - {{ var('label_join_horizon_days') }}
),

superseded as (
    -- The day a newer label for the same transaction replaced a label (the latest label wins).
    -- A self-join, not lead() over transaction_id: few transactions have two labels, and a
    -- window over hundreds of thousands of one-row partitions is slow in DuckDB.
    select
        a.transaction_id,
        a.labeled_ts,
        min(b.label_date) as superseded_on
    from labels as a
    inner join labels as b on a.transaction_id = b.transaction_id and b.labeled_ts > a.labeled_ts
    group by a.transaction_id, a.labeled_ts
),

label_deltas as (
    -- A label made on day L counts for days L+1 .. L+window, until a newer label replaces it.
    select merchant_id, label_date + 1 as day, 1 as labels, is_fraud as frauds
    from labels
    union all
    select
        l.merchant_id,
        least(l.label_date + {{ label_window }}, coalesce(s.superseded_on, l.label_date + {{ label_window }})) + 1,
        -1,
        -l.is_fraud
    from labels as l
    left join superseded as s on l.transaction_id = s.transaction_id and l.labeled_ts = s.labeled_ts
),

merchant_risk as (
    select
        merchant_id,
        day,
        sum(labels) over running as labels_in_window,
        sum(frauds) over running as frauds_in_window
    from (
        select merchant_id, day, sum(labels) as labels, sum(frauds) as frauds
        from label_deltas
        group by merchant_id, day
    )
    window running as (partition by merchant_id order by day rows unbounded preceding)
)

select
    c.transaction_id,
    c.event_ts as event_time,
    c.event_date,
    c.card_id,
    c.merchant_id,
    c.channel,
    c.country,
    c.merchant_category,
    c.amount,
    case c.channel
        {%- for channel, code in var('channel_codes').items() %} when '{{ channel }}' then {{ code }}{% endfor %}
    end as channel_code,
    cast(c.merchant_category as integer) as merchant_category_code,
    hour(c.event_ts) as hour_of_day,
    isodow(c.event_ts) as day_of_week,
    {%- for name in var('card_velocity_windows') %}
    h.card_tx_count_{{ name }},
    h.card_amount_sum_{{ name }},
    {%- endfor %}
    h.card_amount_avg_lookback,
    c.amount / nullif(h.card_amount_avg_lookback, 0) as amount_to_card_avg,
    epoch(c.event_ts) - epoch(h.card_last_ts) as seconds_since_card_last_tx,
    case when c.device_id is not null then (h.device_seen = 0)::integer end as is_new_card_device,
    (h.country_seen = 0)::integer as is_new_card_country,
    (h.channel_seen = 0)::integer as is_new_card_channel,
    coalesce(m.labels_in_window, 0) as merchant_labels_window,
    (coalesce(m.frauds_in_window, 0) + {{ var('merchant_prior_rate') }} * {{ var('merchant_prior_weight') }})
    / (coalesce(m.labels_in_window, 0) + {{ var('merchant_prior_weight') }}) as merchant_fraud_rate
from computed as c
inner join card_history as h on c.transaction_id = h.transaction_id
asof left join merchant_risk as m on c.merchant_id = m.merchant_id and c.event_date >= m.day
