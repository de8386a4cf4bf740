"""The bundled codegen problems, written for this project.

Each problem: ``name`` (the function to define), ``args`` (its parameters), ``spec`` (what it must
do), ``solution`` (a reference solution), ``tests``: ``(args tuple, expected value)`` pairs whose
expected values were worked out by hand from the spec (not produced by running the solution; a
test checks that every solution passes its own tests in the sandbox). The first two tests of a
problem are shown to the agent as examples; all of them are run when it submits.
Arguments and results are plain literals (int, float, str, bool, None, lists, tuples, dicts).
"""

from __future__ import annotations

PROBLEMS: list[dict] = [
    {
        "name": "count_vowels",
        "args": "s",
        "spec": "Return how many characters of s are vowels (a, e, i, o, u, in either case).",
        "solution": "def count_vowels(s):\n    return sum(c in 'aeiouAEIOU' for c in s)\n",
        "tests": [(("hello",), 2), (("",), 0), (("AEIOUxyz",), 5), (("rhythm",), 0)],
    },
    {
        "name": "reverse_words",
        "args": "s",
        "spec": "Return the words of s (separated by single spaces) in reverse order, "
        "joined by single spaces.",
        "solution": "def reverse_words(s):\n    return ' '.join(s.split(' ')[::-1])\n",
        "tests": [(("a b c",), "c b a"), (("hello",), "hello"), (("one two",), "two one")],
    },
    {
        "name": "is_palindrome",
        "args": "s",
        "spec": "Return True if s reads the same forwards and backwards, ignoring case and "
        "every character that is not a letter or digit; otherwise False.",
        "solution": "def is_palindrome(s):\n    t = [c.lower() for c in s if c.isalnum()]\n"
        "    return t == t[::-1]\n",
        "tests": [
            (("Racecar",), True),
            (("abc",), False),
            (("A man, a plan, a canal: Panama",), True),
            (("",), True),
            (("ab1",), False),
        ],
    },
    {
        "name": "fizzbuzz",
        "args": "n",
        "spec": "Return 'FizzBuzz' if n is divisible by 15, 'Fizz' if by 3, 'Buzz' if by 5, "
        "otherwise str(n).",
        "solution": "def fizzbuzz(n):\n    if n % 15 == 0:\n        return 'FizzBuzz'\n"
        "    if n % 3 == 0:\n        return 'Fizz'\n    if n % 5 == 0:\n        return 'Buzz'\n"
        "    return str(n)\n",
        "tests": [
            ((3,), "Fizz"),
            ((10,), "Buzz"),
            ((30,), "FizzBuzz"),
            ((7,), "7"),
            ((0,), "FizzBuzz"),
        ],
    },
    {
        "name": "second_largest",
        "args": "xs",
        "spec": "Return the second largest distinct value of the list xs, or None if xs has "
        "fewer than two distinct values.",
        "solution": "def second_largest(xs):\n    v = sorted(set(xs))\n"
        "    return v[-2] if len(v) >= 2 else None\n",
        "tests": [(([3, 1, 2],), 2), (([5, 5],), None), (([4, 4, 9, 9, 1],), 4), (([],), None)],
    },
    {
        "name": "run_length",
        "args": "s",
        "spec": "Run-length encode s: each maximal run of one character becomes the character "
        "followed by the run's length, e.g. 'aab' -> 'a2b1'.",
        "solution": "def run_length(s):\n    out = []\n    i = 0\n    while i < len(s):\n"
        "        j = i\n        while j < len(s) and s[j] == s[i]:\n            j += 1\n"
        "        out.append(s[i] + str(j - i))\n        i = j\n    return ''.join(out)\n",
        "tests": [(("aab",), "a2b1"), (("",), ""), (("zzzz",), "z4"), (("abca",), "a1b1c1a1")],
    },
    {
        "name": "digit_sum",
        "args": "n",
        "spec": "Return the sum of the decimal digits of the integer n (ignore its sign).",
        "solution": "def digit_sum(n):\n    return sum(int(d) for d in str(abs(n)))\n",
        "tests": [((123,), 6), ((0,), 0), ((-45,), 9), ((9999,), 36)],
    },
    {
        "name": "flatten",
        "args": "xss",
        "spec": "Given a list of lists, return one list with all their elements in order.",
        "solution": "def flatten(xss):\n    return [x for xs in xss for x in xs]\n",
        "tests": [(([[1, 2], [3]],), [1, 2, 3]), (([],), []), (([[], [4], []],), [4])],
    },
    {
        "name": "count_words",
        "args": "s",
        "spec": "Return a dict mapping each whitespace-separated word of s to how many times "
        "it occurs.",
        "solution": "def count_words(s):\n    d = {}\n    for w in s.split():\n"
        "        d[w] = d.get(w, 0) + 1\n    return d\n",
        "tests": [
            (("a b a",), {"a": 2, "b": 1}),
            (("",), {}),
            (("x  y\tx x",), {"x": 3, "y": 1}),
        ],
    },
    {
        "name": "is_prime",
        "args": "n",
        "spec": "Return True if the integer n is a prime number, otherwise False.",
        "solution": "def is_prime(n):\n    if n < 2:\n        return False\n"
        "    i = 2\n    while i * i <= n:\n        if n % i == 0:\n            return False\n"
        "        i += 1\n    return True\n",
        "tests": [
            ((7,), True),
            ((1,), False),
            ((2,), True),
            ((91,), False),
            ((97,), True),
            ((-3,), False),
        ],
    },
    {
        "name": "gcd",
        "args": "a, b",
        "spec": "Return the greatest common divisor of the non-negative integers a and b "
        "(gcd(0, 0) is 0).",
        "solution": "def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a\n",
        "tests": [((12, 18), 6), ((7, 0), 7), ((0, 0), 0), ((17, 5), 1), ((100, 75), 25)],
    },
    {
        "name": "caesar",
        "args": "s, k",
        "spec": "Shift every lowercase letter of s forward by k places in the alphabet, "
        "wrapping from z to a; leave other characters unchanged.",
        "solution": "def caesar(s, k):\n"
        "    return ''.join(chr((ord(c) - 97 + k) % 26 + 97) if 'a' <= c <= 'z' else c "
        "for c in s)\n",
        "tests": [
            (("abc", 1), "bcd"),
            (("xyz", 3), "abc"),
            (("a-b!", 2), "c-d!"),
            (("Hi", 1), "Hj"),
        ],
    },
    {
        "name": "running_sum",
        "args": "xs",
        "spec": "Return the list of running totals of xs: element i is the sum of xs[0..i].",
        "solution": "def running_sum(xs):\n    out, t = [], 0\n    for x in xs:\n"
        "        t += x\n        out.append(t)\n    return out\n",
        "tests": [(([1, 2, 3],), [1, 3, 6]), (([],), []), (([5, -5, 2],), [5, 0, 2])],
    },
    {
        "name": "max_run",
        "args": "xs",
        "spec": "Return the length of the longest run of equal adjacent elements in xs "
        "(0 for an empty list).",
        "solution": "def max_run(xs):\n    best = cur = 0\n    for i, x in enumerate(xs):\n"
        "        cur = cur + 1 if i and xs[i - 1] == x else 1\n        best = max(best, cur)\n"
        "    return best\n",
        "tests": [(([1, 1, 2, 2, 2, 1],), 3), (([],), 0), (([4],), 1), (([1, 2, 3],), 1)],
    },
    {
        "name": "title_case",
        "args": "s",
        "spec": "Return s with the first letter of every space-separated word upper-cased "
        "and the rest of each word lower-cased.",
        "solution": "def title_case(s):\n"
        "    return ' '.join(w[:1].upper() + w[1:].lower() for w in s.split(' '))\n",
        "tests": [
            (("hello world",), "Hello World"),
            (("aBC",), "Abc"),
            (("",), ""),
            (("a  b",), "A  B"),
        ],
    },
    {
        "name": "binary",
        "args": "n",
        "spec": "Return the binary representation of the non-negative integer n as a string "
        "without a prefix.",
        "solution": "def binary(n):\n    return format(n, 'b')\n",
        "tests": [((5,), "101"), ((0,), "0"), ((8,), "1000"), ((255,), "11111111")],
    },
    {
        "name": "from_binary",
        "args": "s",
        "spec": "Return the integer whose binary representation is the string s of 0s and 1s.",
        "solution": "def from_binary(s):\n    return int(s, 2)\n",
        "tests": [(("101",), 5), (("0",), 0), (("1111",), 15), (("100000",), 32)],
    },
    {
        "name": "anagrams",
        "args": "a, b",
        "spec": "Return True if the strings a and b contain exactly the same characters with "
        "the same counts, otherwise False.",
        "solution": "def anagrams(a, b):\n    return sorted(a) == sorted(b)\n",
        "tests": [
            (("listen", "silent"), True),
            (("ab", "abb"), False),
            (("", ""), True),
            (("ab", "AB"), False),
        ],
    },
    {
        "name": "dedupe",
        "args": "xs",
        "spec": "Return the elements of xs without repeats, keeping the first occurrence of "
        "each in its original order.",
        "solution": "def dedupe(xs):\n    seen, out = set(), []\n    for x in xs:\n"
        "        if x not in seen:\n            seen.add(x)\n            out.append(x)\n"
        "    return out\n",
        "tests": [(([3, 1, 3, 2, 1],), [3, 1, 2]), (([],), []), ((["a", "a"],), ["a"])],
    },
    {
        "name": "chunk",
        "args": "xs, n",
        "spec": "Split the list xs into consecutive chunks of length n (the last may be "
        "shorter) and return the list of chunks.",
        "solution": "def chunk(xs, n):\n    return [xs[i:i + n] for i in range(0, len(xs), n)]\n",
        "tests": [
            (([1, 2, 3, 4, 5], 2), [[1, 2], [3, 4], [5]]),
            (([], 3), []),
            (([1, 2], 5), [[1, 2]]),
        ],
    },
    {
        "name": "transpose",
        "args": "m",
        "spec": "Return the transpose of the rectangular matrix m given as a list of rows.",
        "solution": "def transpose(m):\n    return [list(r) for r in zip(*m)]\n",
        "tests": [
            (([[1, 2, 3], [4, 5, 6]],), [[1, 4], [2, 5], [3, 6]]),
            (([[7]],), [[7]]),
            (([[1, 2]],), [[1], [2]]),
        ],
    },
    {
        "name": "clamp",
        "args": "x, lo, hi",
        "spec": "Return x limited to the range [lo, hi]: lo if x < lo, hi if x > hi, else x.",
        "solution": "def clamp(x, lo, hi):\n    return max(lo, min(hi, x))\n",
        "tests": [((5, 0, 10), 5), ((-3, 0, 10), 0), ((12, 0, 10), 10), ((0, 0, 0), 0)],
    },
    {
        "name": "factorial",
        "args": "n",
        "spec": "Return n! for a non-negative integer n (0! is 1).",
        "solution": "def factorial(n):\n    r = 1\n    for i in range(2, n + 1):\n"
        "        r *= i\n    return r\n",
        "tests": [((0,), 1), ((5,), 120), ((1,), 1), ((10,), 3628800)],
    },
    {
        "name": "fib",
        "args": "n",
        "spec": "Return the n-th Fibonacci number, with fib(0) = 0 and fib(1) = 1.",
        "solution": "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n"
        "        a, b = b, a + b\n    return a\n",
        "tests": [((0,), 0), ((1,), 1), ((10,), 55), ((20,), 6765)],
    },
    {
        "name": "count_char",
        "args": "s, c",
        "spec": "Return how many times the single character c occurs in s.",
        "solution": "def count_char(s, c):\n    return s.count(c)\n",
        "tests": [(("banana", "a"), 3), (("", "x"), 0), (("aaa", "b"), 0), (("Aa", "a"), 1)],
    },
    {
        "name": "merge_sorted",
        "args": "a, b",
        "spec": "Merge the two ascending lists a and b into one ascending list.",
        "solution": "def merge_sorted(a, b):\n    i = j = 0\n    out = []\n"
        "    while i < len(a) and j < len(b):\n        if a[i] <= b[j]:\n"
        "            out.append(a[i])\n            i += 1\n        else:\n"
        "            out.append(b[j])\n            j += 1\n    return out + a[i:] + b[j:]\n",
        "tests": [
            (([1, 4], [2, 3]), [1, 2, 3, 4]),
            (([], [1]), [1]),
            (([1, 1], [1]), [1, 1, 1]),
            (([5], []), [5]),
        ],
    },
    {
        "name": "rotate",
        "args": "xs, k",
        "spec": "Rotate the list xs right by k positions (k may exceed the length) and return "
        "the new list; an empty list stays empty.",
        "solution": "def rotate(xs, k):\n    if not xs:\n        return []\n"
        "    k %= len(xs)\n    return xs[-k:] + xs[:-k] if k else list(xs)\n",
        "tests": [
            (([1, 2, 3, 4], 1), [4, 1, 2, 3]),
            (([1, 2, 3], 5), [2, 3, 1]),
            (([], 2), []),
            (([1, 2], 0), [1, 2]),
        ],
    },
    {
        "name": "mean",
        "args": "xs",
        "spec": "Return the arithmetic mean of the non-empty list of numbers xs as a float.",
        "solution": "def mean(xs):\n    return sum(xs) / len(xs)\n",
        "tests": [(([1, 2, 3],), 2.0), (([5],), 5.0), (([1, 2],), 1.5), (([-1, 1],), 0.0)],
    },
    {
        "name": "median",
        "args": "xs",
        "spec": "Return the median of the non-empty list of numbers xs (the mean of the two "
        "middle values when the length is even, as a float in that case).",
        "solution": "def median(xs):\n    v = sorted(xs)\n    n = len(v)\n"
        "    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2\n",
        "tests": [(([3, 1, 2],), 2), (([4, 1, 3, 2],), 2.5), (([7],), 7), (([1, 1],), 1.0)],
    },
    {
        "name": "vowel_first",
        "args": "words",
        "spec": "Return the words of the list words that start with a lowercase vowel "
        "(a, e, i, o, u), in their original order.",
        "solution": "def vowel_first(words):\n    return [w for w in words if w and w[0] in 'aeiou']\n",
        "tests": [
            ((["apple", "kiwi", "orange"],), ["apple", "orange"]),
            (([],), []),
            ((["", "Egg", "ice"],), ["ice"]),
        ],
    },
    {
        "name": "snake_to_camel",
        "args": "s",
        "spec": "Convert a snake_case identifier to camelCase: drop each underscore and "
        "upper-case the letter after it.",
        "solution": "def snake_to_camel(s):\n    parts = s.split('_')\n"
        "    return parts[0] + ''.join(p[:1].upper() + p[1:] for p in parts[1:])\n",
        "tests": [
            (("hello_world",), "helloWorld"),
            (("a",), "a"),
            (("get_http_code",), "getHttpCode"),
        ],
    },
    {
        "name": "camel_to_snake",
        "args": "s",
        "spec": "Convert a camelCase identifier to snake_case: put an underscore before every "
        "uppercase letter and lower-case it.",
        "solution": "def camel_to_snake(s):\n"
        "    return ''.join('_' + c.lower() if c.isupper() else c for c in s)\n",
        "tests": [
            (("helloWorld",), "hello_world"),
            (("a",), "a"),
            (("getHttpCode",), "get_http_code"),
        ],
    },
    {
        "name": "balanced",
        "args": "s",
        "spec": "Return True if the brackets (), [] and {} in s are balanced and properly "
        "nested (other characters are ignored), otherwise False.",
        "solution": "def balanced(s):\n    pairs = {')': '(', ']': '[', '}': '{'}\n"
        "    stack = []\n    for c in s:\n        if c in '([{':\n            stack.append(c)\n"
        "        elif c in pairs:\n            if not stack or stack.pop() != pairs[c]:\n"
        "                return False\n    return not stack\n",
        "tests": [
            (("([]{})",), True),
            (("(]",), False),
            (("",), True),
            (("((a)",), False),
            (("a)(",), False),
        ],
    },
    {
        "name": "roman",
        "args": "n",
        "spec": "Return the Roman numeral of the integer 1 <= n <= 3999 (subtractive form: "
        "4 is IV, 9 is IX, 40 is XL, 90 is XC, 400 is CD, 900 is CM).",
        "solution": "def roman(n):\n"
        "    vals = [(1000, 'M'), (900, 'CM'), (500, 'D'), (400, 'CD'), (100, 'C'), (90, 'XC'),\n"
        "            (50, 'L'), (40, 'XL'), (10, 'X'), (9, 'IX'), (5, 'V'), (4, 'IV'), (1, 'I')]\n"
        "    out = ''\n    for v, s in vals:\n        while n >= v:\n            out += s\n"
        "            n -= v\n    return out\n",
        "tests": [
            ((4,), "IV"),
            ((9,), "IX"),
            ((14,), "XIV"),
            ((1994,), "MCMXCIV"),
            ((3999,), "MMMCMXCIX"),
        ],
    },
    {
        "name": "sum_evens",
        "args": "xs",
        "spec": "Return the sum of the even integers in xs.",
        "solution": "def sum_evens(xs):\n    return sum(x for x in xs if x % 2 == 0)\n",
        "tests": [(([1, 2, 3, 4],), 6), (([],), 0), (([1, 3],), 0), (([-2, 5],), -2)],
    },
    {
        "name": "product",
        "args": "xs",
        "spec": "Return the product of the numbers in xs (1 for an empty list).",
        "solution": "def product(xs):\n    p = 1\n    for x in xs:\n        p *= x\n    return p\n",
        "tests": [(([2, 3, 4],), 24), (([],), 1), (([5, 0],), 0), (([-1, -2],), 2)],
    },
    {
        "name": "index_of",
        "args": "xs, x",
        "spec": "Return the index of the first occurrence of x in the list xs, or -1 if x is "
        "not in it.",
        "solution": "def index_of(xs, x):\n    return xs.index(x) if x in xs else -1\n",
        "tests": [(([4, 5, 4], 4), 0), (([4, 5], 6), -1), (([], 1), -1), (([1, 2, 3], 3), 2)],
    },
    {
        "name": "pairs_sum",
        "args": "xs, t",
        "spec": "Return the number of index pairs i < j with xs[i] + xs[j] == t.",
        "solution": "def pairs_sum(xs, t):\n    n = len(xs)\n"
        "    return sum(1 for i in range(n) for j in range(i + 1, n) if xs[i] + xs[j] == t)\n",
        "tests": [(([1, 2, 3, 4], 5), 2), (([1, 1, 1], 2), 3), (([], 0), 0), (([5], 10), 0)],
    },
    {
        "name": "word_lengths",
        "args": "s",
        "spec": "Return the list of the lengths of the whitespace-separated words of s.",
        "solution": "def word_lengths(s):\n    return [len(w) for w in s.split()]\n",
        "tests": [(("hi there",), [2, 5]), (("",), []), (("  a  bcd ",), [1, 3])],
    },
    {
        "name": "longest_word",
        "args": "s",
        "spec": "Return the longest whitespace-separated word of s (the first one on a tie), "
        "or '' if s has no words.",
        "solution": "def longest_word(s):\n    best = ''\n    for w in s.split():\n"
        "        if len(w) > len(best):\n            best = w\n    return best\n",
        "tests": [(("a bbb cc",), "bbb"), (("",), ""), (("ab cd",), "ab"), (("x yz",), "yz")],
    },
    {
        "name": "compress_spaces",
        "args": "s",
        "spec": "Replace every run of spaces in s by a single space and strip spaces at both ends.",
        "solution": "def compress_spaces(s):\n    return ' '.join(w for w in s.split(' ') if w)\n",
        "tests": [(("  a   b ",), "a b"), (("",), ""), (("abc",), "abc"), (("   ",), "")],
    },
    {
        "name": "histogram",
        "args": "xs",
        "spec": "Return a dict mapping each distinct element of xs to its number of occurrences.",
        "solution": "def histogram(xs):\n    d = {}\n    for x in xs:\n        d[x] = d.get(x, 0) + 1\n"
        "    return d\n",
        "tests": [
            (([1, 2, 1],), {1: 2, 2: 1}),
            (([],), {}),
            ((["a", "b", "a", "a"],), {"a": 3, "b": 1}),
        ],
    },
    {
        "name": "invert_dict",
        "args": "d",
        "spec": "Return a dict mapping each value of d to its key (the values are distinct).",
        "solution": "def invert_dict(d):\n    return {v: k for k, v in d.items()}\n",
        "tests": [(({"a": 1, "b": 2},), {1: "a", 2: "b"}), (({},), {}), (({1: "x"},), {"x": 1})],
    },
    {
        "name": "digits",
        "args": "n",
        "spec": "Return the list of the decimal digits of the non-negative integer n, most "
        "significant first.",
        "solution": "def digits(n):\n    return [int(c) for c in str(n)]\n",
        "tests": [((305,), [3, 0, 5]), ((0,), [0]), ((7,), [7]), ((1000,), [1, 0, 0, 0])],
    },
    {
        "name": "is_sorted",
        "args": "xs",
        "spec": "Return True if xs is in non-decreasing order, otherwise False.",
        "solution": "def is_sorted(xs):\n    return all(a <= b for a, b in zip(xs, xs[1:]))\n",
        "tests": [(([1, 2, 2, 5],), True), (([3, 1],), False), (([],), True), (([4],), True)],
    },
    {
        "name": "collatz_steps",
        "args": "n",
        "spec": "Return how many Collatz steps take the positive integer n to 1 (n/2 if n is "
        "even, else 3n+1).",
        "solution": "def collatz_steps(n):\n    k = 0\n    while n != 1:\n"
        "        n = n // 2 if n % 2 == 0 else 3 * n + 1\n        k += 1\n    return k\n",
        "tests": [((1,), 0), ((2,), 1), ((6,), 8), ((7,), 16), ((27,), 111)],
    },
    {
        "name": "triangle_kind",
        "args": "a, b, c",
        "spec": "Classify a triangle by its side lengths: 'invalid' if some side is not "
        "shorter than the other two combined, else 'equilateral', 'isosceles' or 'scalene'.",
        "solution": "def triangle_kind(a, b, c):\n    x, y, z = sorted((a, b, c))\n"
        "    if x + y <= z:\n        return 'invalid'\n    if x == z:\n        return 'equilateral'\n"
        "    if x == y or y == z:\n        return 'isosceles'\n    return 'scalene'\n",
        "tests": [
            ((3, 3, 3), "equilateral"),
            ((3, 4, 5), "scalene"),
            ((2, 2, 3), "isosceles"),
            ((1, 2, 3), "invalid"),
            ((5, 1, 1), "invalid"),
        ],
    },
    {
        "name": "leap_year",
        "args": "y",
        "spec": "Return True if y is a leap year of the Gregorian calendar (divisible by 4, "
        "except centuries not divisible by 400).",
        "solution": "def leap_year(y):\n    return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)\n",
        "tests": [((2024,), True), ((1900,), False), ((2000,), True), ((2023,), False)],
    },
    {
        "name": "acronym",
        "args": "s",
        "spec": "Return the upper-cased first letters of the whitespace-separated words of s.",
        "solution": "def acronym(s):\n    return ''.join(w[0].upper() for w in s.split())\n",
        "tests": [(("portable network graphics",), "PNG"), (("",), ""), (("Hello  world",), "HW")],
    },
    {
        "name": "mask_card",
        "args": "s",
        "spec": "Replace every character of s except the last four by '#'.",
        "solution": "def mask_card(s):\n    return '#' * max(len(s) - 4, 0) + s[-4:]\n",
        "tests": [
            (("1234567890",), "######7890"),
            (("abc",), "abc"),
            (("",), ""),
            (("12345",), "#2345"),
        ],
    },
    {
        "name": "sum_multiples",
        "args": "n",
        "spec": "Return the sum of the integers 1..n that are divisible by 3 or 5.",
        "solution": "def sum_multiples(n):\n    return sum(i for i in range(1, n + 1) if i % 3 == 0 or i % 5 == 0)\n",
        "tests": [((10,), 33), ((0,), 0), ((5,), 8), ((15,), 60)],
    },
    {
        "name": "min_max",
        "args": "xs",
        "spec": "Return the tuple (smallest, largest) of the non-empty list xs.",
        "solution": "def min_max(xs):\n    return (min(xs), max(xs))\n",
        "tests": [(([3, 1, 2],), (1, 3)), (([5],), (5, 5)), (([-1, -7, 4],), (-7, 4))],
    },
    {
        "name": "zip_dict",
        "args": "keys, values",
        "spec": "Return a dict pairing keys[i] with values[i], ignoring the extra elements of "
        "the longer list.",
        "solution": "def zip_dict(keys, values):\n    return dict(zip(keys, values))\n",
        "tests": [
            ((["a", "b"], [1, 2]), {"a": 1, "b": 2}),
            (([], [1]), {}),
            ((["x", "y"], [0]), {"x": 0}),
        ],
    },
    {
        "name": "nth_prime",
        "args": "n",
        "spec": "Return the n-th prime number, counting from nth_prime(1) = 2.",
        "solution": "def nth_prime(n):\n    count, k = 0, 1\n    while count < n:\n        k += 1\n"
        "        if all(k % d for d in range(2, int(k ** 0.5) + 1)):\n            count += 1\n"
        "    return k\n",
        "tests": [((1,), 2), ((2,), 3), ((5,), 11), ((10,), 29)],
    },
    {
        "name": "power_set_size",
        "args": "xs",
        "spec": "Return how many distinct subsets the set of distinct elements of xs has.",
        "solution": "def power_set_size(xs):\n    return 2 ** len(set(xs))\n",
        "tests": [(([1, 2],), 4), (([],), 1), (([1, 1, 1],), 2), (([1, 2, 3],), 8)],
    },
    {
        "name": "alternate_case",
        "args": "s",
        "spec": "Return s with its characters alternately upper-cased and lower-cased, "
        "starting with upper case at index 0.",
        "solution": "def alternate_case(s):\n"
        "    return ''.join(c.upper() if i % 2 == 0 else c.lower() for i, c in enumerate(s))\n",
        "tests": [(("hello",), "HeLlO"), (("",), ""), (("AB",), "Ab"), (("a b",), "A B")],
    },
    {
        "name": "sort_desc",
        "args": "xs",
        "spec": "Return a new list with the elements of xs sorted in descending order.",
        "solution": "def sort_desc(xs):\n    return sorted(xs, reverse=True)\n",
        "tests": [(([1, 3, 2],), [3, 2, 1]), (([],), []), (([2, 2, 1],), [2, 2, 1])],
    },
]
