import pytest

from lightning_edit import EditRequest, PromptAnswer, RequestError, requests_from_lists


def test_valid_request_roundtrips_through_dict():
    r = EditRequest(prompt="The capital of France is", target_new="Lyon", subject="France", target_true="Paris",
                    rephrase_prompts=["France's capital is"], locality=[PromptAnswer("The capital of Spain is", "Madrid")],
                    case_id=3)
    assert EditRequest.from_dict(r.to_dict()) == r
    assert r.require_subject("rome") == "France"


@pytest.mark.parametrize("kwargs, field", [
    (dict(prompt="", target_new="x"), "prompt"),
    (dict(prompt="  ", target_new="x"), "prompt"),
    (dict(prompt="p", target_new=""), "target_new"),
    (dict(prompt="p", target_new=3), "target_new"),
    (dict(prompt=None, target_new="x"), "prompt"),
    (dict(prompt="p", target_new="x", subject=""), "subject"),
    (dict(prompt="p", target_new="x", target_true=5), "target_true"),
    (dict(prompt="p", target_new="x", rephrase_prompts="one string"), "rephrase_prompts"),
    (dict(prompt="p", target_new="x", rephrase_prompts=[""]), "rephrase_prompts"),
    (dict(prompt="p", target_new="x", locality=[("a", "b")]), "locality"),
    (dict(prompt="p", target_new="x", portability=[PromptAnswer("q", "")]), "portability"),
])
def test_bad_fields_name_the_field(kwargs, field):
    with pytest.raises(RequestError, match=f"'{field}'"):
        EditRequest(**kwargs)


def test_subject_must_occur_in_prompt_for_methods_that_need_it():
    r = EditRequest(prompt="The capital of France is", target_new="Lyon", subject="Germany")
    with pytest.raises(RequestError, match="does not occur"):
        r.require_subject("rome")
    with pytest.raises(RequestError, match="needs field 'subject'"):
        EditRequest(prompt="p", target_new="x").require_subject("rome")


def test_requests_from_easyedit_lists():
    reqs = requests_from_lists(
        prompts=["A is", "B is"], target_new=["x", "y"], subject=["A", "B"], ground_truth=["u", "v"],
        rephrase_prompts=["A, rephrased, is", ["B1 is", "B2 is"]],
        locality_inputs={"neighborhood": {"prompt": ["C is", "D is"], "ground_truth": ["c", "d"]}},
        portability_inputs={"one_hop": {"prompt": ["A's x is", "B's y is"], "ground_truth": ["z", "w"]}},
    )
    assert [r.target_true for r in reqs] == ["u", "v"]
    assert reqs[1].rephrase_prompts == ("B1 is", "B2 is")
    assert reqs[0].locality == (PromptAnswer("C is", "c", "neighborhood"),)
    assert reqs[1].portability[0].answer == "w"
    with pytest.raises(RequestError, match="'target_new' has 1 items"):
        requests_from_lists(prompts=["A is", "B is"], target_new=["x"])
    with pytest.raises(RequestError, match="keys 'prompt' and 'ground_truth'"):
        requests_from_lists(prompts=["A is"], target_new=["x"], locality_inputs={"n": {"prompt": ["C"]}})
