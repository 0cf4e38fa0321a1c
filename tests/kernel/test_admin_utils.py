"""Admin pages whose address is edited by hand (``kernel.admin_utils``): a filter the database cannot apply, or an
add form's initial value its field cannot take, is the page with a message, never a 500; on every admin page,
ours and those of the apps we install."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.auth.models import AbstractUser
from django.test import Client, RequestFactory

from catalog.models import Category
from kernel.admin_utils import InputSafeAdmin
from ranking.models import BusinessRule
from tests.factories import InteractionFactory


@pytest.fixture
def staff(django_user_model: type[AbstractUser]) -> Client:
    client = Client()  # raises what a view raises: a 500 fails the test with its traceback
    client.force_login(django_user_model.objects.create_superuser("merch", "m@example.com", "pw"))
    return client


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("/admin/catalog/item/?title=%00", "title"),  # Postgres refuses a NUL in text
        ("/admin/catalog/item/?title__regex=(", "title__regex"),  # not a regular expression
        ("/admin/catalog/item/?tags__contains=x", "tags__contains"),  # not an array
        ("/admin/catalog/item/?attributes__colour=%00", "attributes__colour"),
        ("/admin/catalog/item/?title__unaccent=x", "title__unaccent"),  # the extension is not installed
        ("/admin/catalog/item/?created_at__year=0", "created_at__year"),  # no such year: fails building the SQL
        ("/admin/events/interaction/?occurred_at__year=99999", "occurred_at__year"),
        ("/admin/ranking/businessrule/?kind__exact=%00", "kind__exact"),  # a list filter's own parameter
        ("/admin/experiments/experiment/?status__exact=%00&o=2", "status__exact"),
        ("/admin/auth/user/?username=%00", "username"),  # Django's own page
        ("/admin/axes/accessattempt/?ip_address=not-an-ip", "ip_address"),  # django-axes' page
    ],
)
def test_a_hand_edited_filter_the_database_cannot_apply_is_the_whole_list_with_a_message(
    staff: Client, url: str, named: str
) -> None:
    InteractionFactory()
    response = staff.get(url)
    assert response.status_code == 302  # Django's answer to a lookup it refuses itself (?id__in=garbage)
    assert response["Location"].endswith("?e=1")
    page = staff.get(response["Location"])
    assert page.status_code == 200
    (message,) = [str(m) for m in page.context["messages"]]
    assert message.startswith(f"The list cannot be filtered by {named} as the address asks (")


@pytest.mark.django_db
def test_a_filter_that_applies_is_untouched(staff: Client) -> None:
    InteractionFactory(item__title="Blue mug")
    page = staff.get("/admin/catalog/item/?title=Blue+mug&created_at__year=2026")
    assert page.status_code == 200
    assert page.context["cl"].result_count == 1
    assert not list(page.context["messages"])


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url",
    [
        "/admin/catalog/item/add/?category=abc",  # a foreign key's initial value is looked up
        "/admin/catalog/item/add/?created_at=yesterday",  # a split date-time widget wants a datetime
        "/admin/ranking/businessrule/add/?item=%00&starts_at=x",
    ],
)
def test_an_add_forms_initial_value_its_field_cannot_take_is_left_out(staff: Client, url: str) -> None:
    assert staff.get(url).status_code == 200


@pytest.mark.django_db
def test_an_add_forms_initial_values_that_fit_are_still_filled_in(staff: Client) -> None:
    mugs = Category.objects.create(external_id="mugs", name="Mugs")
    form = (
        staff.get(f"/admin/ranking/businessrule/add/?category={mugs.pk}&name=Mugs&kind=bury&category=x")
        .context["adminform"]
        .form
    )
    assert (form.initial["name"], form.initial["kind"]) == ("Mugs", "bury")
    assert "category" not in form.initial  # the last of a repeated key counts, as in Django: "x" is no category
    form = staff.get(f"/admin/ranking/businessrule/add/?category={mugs.pk}").context["adminform"].form
    assert form.initial["category"] == mugs.pk
    assert not BusinessRule.objects.exists()


@pytest.mark.django_db
def test_an_autocomplete_search_with_a_nul_finds_nothing(staff: Client) -> None:
    InteractionFactory(item__external_id="mug")
    url = "/admin/autocomplete/?app_label=ranking&model_name=businessrule&field_name=item&term="
    assert staff.get(url + "%00").json()["results"] == []
    assert [row["text"] for row in staff.get(url + "mug").json()["results"]] != []


@pytest.mark.django_db
def test_a_prefilled_text_stays_as_typed(staff: Client) -> None:
    form = staff.get("/admin/catalog/item/add/?tags=a,b&price=abc").context["adminform"].form
    assert (form.initial["tags"], form.initial["price"]) == ("a,b", "abc")  # the form says what is wrong on save


def test_every_admin_page_is_input_safe() -> None:
    unsafe = [model for model, page in admin.site._registry.items() if not isinstance(page, InputSafeAdmin)]
    assert unsafe == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("[" * 5000 + "]" * 5000, "nested 5000 levels deep; at most 32"),  # was a RecursionError
        ('{"exploration_share": NaN}', "NaN is not a number JSON allows"),
        ('{"\\u0000": 1}', "without a NUL character"),  # was Postgres' "unsupported Unicode escape sequence"
        ('{"a": "\\udc00"}', "lone surrogate"),  # was Postgres' "invalid input syntax for type json"
    ],
)
def test_json_typed_in_the_admin_that_cannot_be_stored_is_a_form_error(
    staff: Client, config: str, message: str
) -> None:
    response = staff.post("/admin/experiments/surfacedefault/add/", {"surface": "home", "config": config})
    assert response.status_code == 200
    assert message in " ".join(response.context["adminform"].form.errors["config"])
    variant = {
        "key": "deep", "name": "Deep", "hypothesis": "", "surface": "home", "namespace": "", "namespace_start": "",
        "namespace_end": "", "mode": "ab", "primary_metric": "ctr", "minimum_detectable_effect": "0.05",
        "attribution_window_hours": "24", "guardrails": config, "hash_seed": "",
        "variants-TOTAL_FORMS": "2", "variants-INITIAL_FORMS": "0", "variants-MIN_NUM_FORMS": "2",
        "variants-MAX_NUM_FORMS": "1000", "variants-0-name": "control", "variants-0-is_control": "on",
        "variants-0-weight": "0.5", "variants-0-config": "{}", "variants-1-name": "b", "variants-1-weight": "0.5",
        "variants-1-config": config,  # an inline's JSON field too
    }  # fmt: skip
    response = staff.post("/admin/experiments/experiment/add/", variant)
    assert response.status_code == 200
    assert message in " ".join(response.context["adminform"].form.errors["guardrails"])
    assert message in str(response.context["inline_admin_formsets"][0].formset.errors[1]["config"])


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("url", "form", "field"),
    [
        ("/admin/ranking/businessrule/add/", {"name": "r", "kind": "boost", "target": "item", "item": "abc",
                                              "weight": "0.5", "status": "published"}, "item"),
        ("/admin/ranking/businessrule/add/", {"name": "r", "kind": "boost", "target": "item", "item": "\x00",
                                              "replaces": "x", "weight": "0.5", "status": "published"}, "replaces"),
        ("/admin/catalog/category/add/", {"external_id": "mugs", "name": "Mugs", "parent": "abc"}, "parent"),
    ],
)  # fmt: skip
def test_a_related_id_that_is_no_number_is_a_form_error(staff: Client, url: str, form: dict, field: str) -> None:
    """The form refused it, then re-rendering the autocomplete looked it up as a number: a 500."""
    response = staff.post(url, form)
    assert response.status_code == 200
    assert "Select a valid choice" in " ".join(response.context["adminform"].form.errors[field])


@pytest.mark.django_db
def test_an_action_for_ids_that_are_no_rows_runs_on_nothing(staff: Client) -> None:
    mugs = Category.objects.create(external_id="mugs", name="Mugs")
    rule = BusinessRule.objects.create(name="Mugs", kind="boost", target="category", category=mugs, weight=0.5)
    for extra in ({}, {"index": "0"}):  # the confirmation page's post, and the list's
        response = staff.post(
            "/admin/ranking/businessrule/",
            {"action": "delete_selected", "_selected_action": [rule.pk, "abc"], "post": "yes", **extra},
        )
        assert response.status_code == 302
        assert "'abc' is not the id of a row" in str(list(staff.get(response["Location"]).context["messages"])[0])
    assert BusinessRule.objects.filter(pk=rule.pk).exists()


def test_a_pages_own_change_list_is_kept_and_made_input_safe(rf: RequestFactory) -> None:
    """A third party's admin with its own ChangeList keeps it under the input-safe wrapping."""
    from django.contrib.admin.views.main import ChangeList

    from kernel.admin_utils import QueryStringSafeChangeList

    class OwnChangeList(ChangeList):
        pass

    class OwnAdmin(admin.ModelAdmin):
        def get_changelist(self, request: object, **kwargs: object) -> type[ChangeList]:
            return OwnChangeList

    wrapped = type("OwnAdmin", (InputSafeAdmin, OwnAdmin), {})(Category, admin.site)
    changelist = wrapped.get_changelist(rf.get("/"))
    assert issubclass(changelist, OwnChangeList)
    assert issubclass(changelist, QueryStringSafeChangeList)
    plain = type("PlainAdmin", (InputSafeAdmin,), {})(Category, admin.site)
    assert plain.get_changelist(rf.get("/")) is QueryStringSafeChangeList
