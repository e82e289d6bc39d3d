{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='label_date',
    )
}}

-- The run's days of bronze labels (by the day each label was made), loaded into the warehouse.
select
    transaction_id,
    timezone('UTC', labeled_at) as labeled_ts,
    label_date,
    is_fraud
from {{ source('bronze', 'labels') }}
where label_date between {{ min_date() }} and {{ max_date() }}
