{# The first and last event day this run computes, as DATE literals. #}
{% macro min_date() %}date '{{ var("min_date") }}'{% endmacro %}
{% macro max_date() %}date '{{ var("max_date") }}'{% endmacro %}
