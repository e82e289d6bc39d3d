{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='event_date',
    )
}}

-- The run's days of bronze transactions, loaded into the warehouse (DuckDB plans joins and
-- windows far better over its own tables than over a Delta scan), with the event time as a
-- plain UTC timestamp so that windows and hour / weekday never depend on a session time zone.
select
    transaction_id,
    timezone('UTC', event_time) as event_ts,
    event_date,
    card_id,
    merchant_id,
    merchant_category,
    amount,
    currency,
    country,
    channel,
    device_id
from {{ source('bronze', 'transactions') }}
where event_date between {{ min_date() }} and {{ max_date() }}
